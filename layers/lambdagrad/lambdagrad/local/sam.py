"""SAM template -> CloudFormation template, for deploying into moto.

Three steps, each usable alone:

1. :func:`load_template` parses YAML with CloudFormation's short-form tags (``!Ref``,
   ``!GetAtt``, ``!Sub`` ...) into the long form (``{"Ref": ...}``), or reads JSON.
2. :func:`localize` rewrites the parts of a SAM template that point at the local disk:
   ``CodeUri``/``ContentUri`` folders become ``s3://<staging bucket>/<key>`` (the caller
   uploads :func:`lambdagrad.local.invoker.make_code_zip` there, which points the in-process
   invoker back at the folder) and a ``DefinitionUri`` file is inlined as ``Definition``
   (its ``DefinitionSubstitutions`` are kept and applied by CloudFormation).
3. :func:`to_cloudformation` runs ``samtranslator``'s transform offline (bundled managed
   policy map, no IAM calls).

Example
-------
>>> tpl = load_template("template.yaml")                        # doctest: +SKIP
>>> tpl, code = localize(tpl, base_dir=Path("."), staging_bucket="staging")  # doctest: +SKIP
>>> cfn = to_cloudformation(tpl, region="us-east-1")            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: Short-form tags whose long form is ``{"Fn::<Tag>": ...}``.
_FN_TAGS = {
    "Base64",
    "Cidr",
    "FindInMap",
    "GetAZs",
    "GetAtt",
    "If",
    "ImportValue",
    "Join",
    "Select",
    "Split",
    "Sub",
    "Transform",
    "And",
    "Equals",
    "Not",
    "Or",
    "ToJsonString",
    "Length",
}


class TemplateError(Exception):
    """The template cannot be deployed locally (bad YAML, unsupported feature, missing file)."""


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader + CloudFormation tags; dates stay strings (``Version: 2012-10-17``)."""


_CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if suffix not in _FN_TAGS:
        raise TemplateError(f"unknown CloudFormation tag !{suffix} at {node.start_mark}")
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: str | Path) -> dict[str, Any]:
    """Read a SAM/CloudFormation template (YAML with short-form tags, or JSON)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.load(text, Loader=_CfnLoader)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: {exc}") from exc
    if not isinstance(data, dict) or "Resources" not in data:
        raise TemplateError(f"{path}: not a CloudFormation template (no Resources)")
    return data


def _is_local(uri: Any) -> bool:
    return isinstance(uri, str) and not uri.startswith(("s3://", "http://", "https://"))


@dataclass(frozen=True)
class CodeArtifact:
    """A local folder that the template deploys as Lambda code (a function or a layer)."""

    logical_id: str
    source: Path
    bucket: str
    key: str


def _artifact(logical_id: str, uri: str, base_dir: Path, bucket: str) -> CodeArtifact:
    source = (base_dir / uri).resolve()
    if not source.exists():
        raise TemplateError(f"{logical_id}: {uri} does not exist (looked in {source})")
    digest = hashlib.sha1(str(source).encode()).hexdigest()[:12]
    return CodeArtifact(logical_id, source, bucket, f"{logical_id}/{digest}.zip")


def _load_definition(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        return yaml.load(text, Loader=_CfnLoader)
    return json.loads(text)


def localize(
    template: dict[str, Any], *, base_dir: Path, staging_bucket: str
) -> tuple[dict[str, Any], list[CodeArtifact]]:
    """Point local paths of a SAM template at S3 and inline state machine definitions.

    Returns the rewritten copy and the code folders to upload (one per function or layer).
    """
    tpl = copy.deepcopy(template)
    transforms = tpl.get("Transform")
    names = transforms if isinstance(transforms, list) else [transforms]
    unsupported = [t for t in names if t and t != "AWS::Serverless-2016-10-31"]
    if unsupported:
        raise TemplateError(f"transforms {unsupported} are not supported by the local engine")
    globals_fn = tpl.get("Globals", {}).get("Function", {})
    global_code = globals_fn.pop("CodeUri", None)
    artifacts: list[CodeArtifact] = []
    for logical_id, resource in tpl.get("Resources", {}).items():
        rtype = resource.get("Type")
        props = resource.setdefault("Properties", {})
        if rtype == "AWS::Serverless::Function":
            if props.get("PackageType") == "Image":
                raise TemplateError(f"{logical_id}: image functions cannot run locally")
            if "InlineCode" in props:
                raise TemplateError(f"{logical_id}: InlineCode is not supported locally")
            uri = props.get("CodeUri", global_code)
            if _is_local(uri):
                art = _artifact(logical_id, uri, base_dir, staging_bucket)
                artifacts.append(art)
                props["CodeUri"] = f"s3://{art.bucket}/{art.key}"
            elif uri is not None:
                props["CodeUri"] = uri
        elif rtype == "AWS::Serverless::LayerVersion":
            uri = props.get("ContentUri")
            if _is_local(uri):
                art = _artifact(logical_id, uri, base_dir, staging_bucket)
                artifacts.append(art)
                props["ContentUri"] = f"s3://{art.bucket}/{art.key}"
        elif rtype == "AWS::Serverless::StateMachine":
            uri = props.get("DefinitionUri")
            if _is_local(uri):
                path = (base_dir / uri).resolve()
                if not path.is_file():
                    raise TemplateError(f"{logical_id}: DefinitionUri {uri} not found")
                props.pop("DefinitionUri")
                props["Definition"] = _load_definition(path)
        elif rtype == "AWS::Lambda::Function":
            code = props.get("Code")
            if _is_local(code):
                art = _artifact(logical_id, code, base_dir, staging_bucket)
                artifacts.append(art)
                props["Code"] = {"S3Bucket": art.bucket, "S3Key": art.key}
    return tpl, artifacts


class _NoIamPolicyLoader:
    """Managed policy names resolve from samtranslator's bundled map; never call IAM."""

    def load(self) -> dict[str, str]:
        return {}


def to_cloudformation(
    template: dict[str, Any], *, region: str, parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Transform a (localized) SAM template into plain CloudFormation, offline."""
    from samtranslator.metrics.method_decorator import MetricsMethodWrapperSingleton
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.translator.transform import transform

    if "Transform" not in template:
        return copy.deepcopy(template)
    with _offline_aws_environment(region):
        try:
            return transform(copy.deepcopy(template), dict(parameters or {}), _NoIamPolicyLoader())  # type: ignore[arg-type]
        except InvalidDocumentException as exc:
            causes = "; ".join(str(c) for c in exc.causes)
            raise TemplateError(f"SAM transform failed: {causes}") from exc
        finally:
            # The translator records timing metrics and warns at exit if nobody published them.
            MetricsMethodWrapperSingleton.get_instance().publish()


@contextlib.contextmanager
def _offline_aws_environment(region: str) -> Iterator[None]:
    """samtranslator reads the region from a boto3 session: give it ``region`` and no profile
    (a missing or SSO profile in the user's environment must not matter)."""
    names = ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
             "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")  # fmt: skip
    saved = {k: os.environ.get(k) for k in names}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_DEFAULT_PROFILE", None)
    os.environ["AWS_DEFAULT_REGION"] = os.environ["AWS_REGION"] = region
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
