"""Quantization's building blocks (method=quantize, and the quantize step of method=compress).

    fake.py   fake quantization with a straight-through estimator on every Linear (QAT), in the integer
              scheme of the backend that will run the model, so the fake-quant model and the deployed int8
              model compute the same numbers up to accumulation order
    ort.py    ONNX export, ONNX Runtime int8 (dynamic, or static with calibration), and OrtModel: an
              InferenceSession that evaluates and times like a torch model
    eager.py  int8 in torch: torch.ao's dynamic int8 Linear (fbgemm/x86 kernels) and torchao's configs
              (per-token dynamic int8, weight-only int8/int4)
    deploy.py what a quantized run saves (quant.json beside the artefact) and how it is loaded back

Accuracy is always that of the deployed model (an ORT session or a torch int8 module), never of the
fake-quant model it came from.
"""
