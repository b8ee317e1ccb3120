"""The LLM text-generation server that the pipeline ships."""
