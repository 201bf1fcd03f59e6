"""lambdagrad: train models on serverless AWS."""

__version__ = "0.1.0"
