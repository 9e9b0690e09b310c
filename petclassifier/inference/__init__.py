"""Answers from a checkpoint: PetClassifier, its ONNX copy, export, and the pretrained kind classifier."""
