"""Writing generated models out for other tools: Hugging Face directories (`save_pretrained`) and ONNX."""
