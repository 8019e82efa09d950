"""Integer quantization of the step model, matmul by matmul: int8 where it is harmless, float
where the error would land in the sound.

Where the error comes from (measured with ``python -m convert.analyze``; docs/conversion.md):

- the **input and the state**: a naive full-int8 model quantizes the flat state (audio history,
  key/value caches, a phase counter) with one scale, and the audio with the same scale (they are
  concatenated): the output is silence (0 dB). I/O and state stay float.
- the **analysis** matmul (audio frame -> filterbank -> log power): with a static int8 input quiet
  passages fall below one step (13-21 dB). With a per-call scale (dynamic-range) a learned
  filterbank was fine (66 dB) but the fixed DFT was not (38 dB): its quiet bins lie under the
  frame's int8 noise floor and the log magnifies their error. So it is tried dynamic, else float.
- an int8 **output** of a matmul that writes into the residual stream (attention out, FFN out) or
  of the feature projection adds its rounding error straight to the trunk (33-46 dB each).
  Matmuls whose output goes through a nonlinearity first (q/k/v -> softmax, FFN up -> GELU,
  FiLM hidden) tolerate int8 activations (59-81 dB each).
- the **gain** and **FIR** heads put their error straight into the sound (41-52 dB in int8), the
  **knob** input layer rounds knob positions to 1/255 (47-59 dB): all three stay float; together
  a few thousand multiply-adds per hop.

So a precision here is a *plan*: for every matmul (found by matching the TFLite weights to the
PyTorch ``nn.Linear`` they came from) one of ``int8`` (static int8 activations, calibrated;
per-channel int8 weights), ``dynamic`` (per-channel int8 weights, float activations quantized per
call) or ``float``. Everything that is not a matmul (LayerNorm, softmax, log, exp, the state
and the dry/gain path) stays float32. ``PLANS`` holds the candidate plans of each precision.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np

# A plan: (module name pattern, mode) rules, first match wins; unmatched matmuls stay float.
# Always float: the gain head (its error multiplies the whole signal), the FIR head (its
# coefficients filter the input directly) and the knob input layer (knob positions rounded to 1/255
# shift every FiLM scale): together a few thousand multiply-adds per hop.
_FLOAT = [("gain_head", "float"), ("fir_head", "float"), ("film.0", "float")]
# dynamic-range where one static activation scale is too coarse: the feature projection (log
# power) and the matmuls that write into the residual stream
_DYNAMIC = [("in_proj", "dynamic"), ("blocks.*.attn.out", "dynamic"), ("blocks.*.ffn.2", "dynamic")]

# Candidate plans per precision, fastest first. The pipeline ships the first one whose SNR vs
# PyTorch clears the precision's floor by PLAN_MARGIN_DB in the device runtime (else the most
# precise one tried): the analysis matmul (a third of the multiply-adds) is int8 only when the
# model tolerates it (the learned filterbank did, 66 dB; the fixed DFT with an FIR head did not, 39 dB).
PLANS = {
    # int8 weights, float activations (quantized per call inside each matmul)
    "dynamic_int8": [("analysis dynamic", _FLOAT + [("*", "dynamic")]),
                     ("analysis float", _FLOAT + [("analysis", "float"), ("*", "dynamic")])],
    # int8 x int8 (static, calibrated) wherever the output passes a nonlinearity before it reaches the
    # residual stream or the sound: FiLM hidden -> FiLM, q/k/v -> softmax, FFN up -> GELU
    "int8": [("analysis dynamic", _FLOAT + [("analysis", "dynamic")] + _DYNAMIC + [("*", "int8")]),
             ("analysis float", _FLOAT + [("analysis", "float")] + _DYNAMIC + [("*", "int8")])],
}
PLAN_MARGIN_DB = 6.0  # room for runtimes and CPUs that round differently (ARM kernels)


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _op_names() -> dict[int, str]:
    schema = _schema()
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _read(model_bytes: bytes):
    from tensorflow.lite.tools import flatbuffer_utils as fbu
    return fbu.convert_bytearray_to_object(bytearray(model_bytes))


def _write(model_obj) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils as fbu
    return bytes(fbu.convert_object_to_bytearray(model_obj))


def _op_name(m, op) -> str:
    oc = m.operatorCodes[op.opcodeIndex]
    return _op_names().get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "CUSTOM")


def _float_buffer(m, tensor) -> np.ndarray | None:
    data = m.buffers[tensor.buffer].data
    if data is None or tensor.type != _schema().TensorType.FLOAT32:
        return None
    return np.frombuffer(bytes(data), np.float32).reshape(tensor.shape)


def calibrated_model(saved_model: Path, calib: dict[str, np.ndarray]) -> bytes:
    """The float TFLite model with min/max statistics of every tensor, from running the
    calibration tuples through it (TFLiteConverter's calibration, no quantization yet)."""
    import tensorflow as tf
    n = len(calib["audio"])

    def representative():
        for i in range(n):
            yield {k: v[i:i + 1].astype(np.float32) for k, v in calib.items()}

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    conv._experimental_calibrate_only = True  # noqa: SLF001 (the documented route to selective quantization)
    return conv.convert()


def linear_names(model_bytes: bytes, torch_model) -> dict[int, str]:
    """{FULLY_CONNECTED op index: PyTorch module name}, by matching each op's float weight matrix
    to the ``nn.Linear`` it came from (shape, and values up to one constant factor). Ops that match
    nothing are left out (and stay float)."""
    import torch
    linears = [(name, mod.weight.detach().numpy()) for name, mod in torch_model.named_modules()
               if isinstance(mod, torch.nn.Linear)]
    m = _read(model_bytes)
    sg = m.subgraphs[0]
    found = {}
    for i, op in enumerate(sg.operators):
        if _op_name(m, op) != "FULLY_CONNECTED":
            continue
        w = _float_buffer(m, sg.tensors[op.inputs[1]])
        if w is None:
            continue
        for name, ref in linears:
            if ref.shape != w.shape:
                continue
            # up to a constant factor: the converter folds scalars (GELU's 0.5, a 0.1 input scale) into weights
            c = float(np.vdot(w, ref) / max(np.vdot(ref, ref), 1e-30))
            if np.allclose(w, c * ref, rtol=1e-4, atol=1e-6 * max(abs(c), 1.0)) and c != 0.0:
                found[i] = name
                break
    return found


def plan_modes(names: dict[int, str], plan: list[tuple[str, str]]) -> dict[int, str]:
    """{op index: mode} for every matched matmul under a plan of (pattern, mode) rules."""
    modes = {}
    for i, name in names.items():
        modes[i] = next((mode for pat, mode in plan if fnmatch.fnmatchcase(name, pat)), "float")
    return modes


def _hybridize(m, op) -> None:
    """A float FULLY_CONNECTED -> dynamic-range: per-channel symmetric int8 weights; the runtime
    quantizes the input per call (asymmetric, so post-GELU inputs keep their resolution) and the
    output stays float."""
    schema = _schema()
    sg = m.subgraphs[0]
    t = sg.tensors[op.inputs[1]]
    w = _float_buffer(m, t)
    scale = np.maximum(np.abs(w).max(axis=1), 1e-12) / 127.0  # (out,)
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
    old = t.buffer
    buf = schema.BufferT()
    buf.data = np.frombuffer(q.tobytes(), np.uint8)
    m.buffers.append(buf)
    t.buffer = len(m.buffers) - 1
    if not any(x.buffer == old for x in sg.tensors):  # the float weights are no longer used: free them
        m.buffers[old].data = None
    t.type = schema.TensorType.INT8
    qp = schema.QuantizationParametersT()
    qp.scale = scale.astype(np.float32).tolist()
    qp.zeroPoint = [0] * len(scale)
    qp.quantizedDimension = 0
    t.quantization = qp
    op.builtinOptions.asymmetricQuantizeInputs = True
    m.operatorCodes[op.opcodeIndex].version = max(m.operatorCodes[op.opcodeIndex].version, 12)


def _drop_fake_quant(m) -> int:
    """Remove QUANTIZE -> DEQUANTIZE pairs that the quantizer leaves on float paths (they only
    round a float tensor to int8 and back). -> number removed."""
    sg = m.subgraphs[0]
    consumers: dict[int, list] = {}
    for op in sg.operators:
        for t in op.inputs if op.inputs is not None else []:
            consumers.setdefault(int(t), []).append(op)
    drop, rename = set(), {}
    for op in sg.operators:
        if _op_name(m, op) != "QUANTIZE" or sg.tensors[op.inputs[0]].type != _schema().TensorType.FLOAT32:
            continue
        users = consumers.get(int(op.outputs[0]), [])
        if users and all(_op_name(m, u) == "DEQUANTIZE" for u in users) and int(op.outputs[0]) not in list(sg.outputs):
            drop.add(id(op))
            for u in users:
                drop.add(id(u))
                rename[int(u.outputs[0])] = int(op.inputs[0])
    if not drop:
        return 0
    sg.operators = [op for op in sg.operators if id(op) not in drop]
    for op in sg.operators:
        op.inputs = np.array([rename.get(int(t), int(t)) for t in op.inputs], np.int32)
    sg.outputs = np.array([rename.get(int(t), int(t)) for t in sg.outputs], np.int32)
    return len(drop) // 2


def quantize(calibrated: bytes, names: dict[int, str], plan: list[tuple[str, str]]) -> tuple[bytes, dict[str, str]]:
    """Apply a plan to the calibrated model. -> (TFLite model bytes with float32 I/O, {module: mode}).

    Static int8 is done by TensorFlow's MLIR quantizer, restricted to the chosen matmuls by
    removing the calibration statistics of every other tensor (its op deny-list alone still lets
    int8 spread through slices and concatenations, down to the state input); dynamic-range
    matmuls are rewritten in the flatbuffer (int8 weights, float activations)."""
    from tensorflow.lite.python import convert as tfl_convert
    modes = plan_modes(names, plan)
    m = _read(calibrated)
    sg = m.subgraphs[0]
    keep = set()
    for i, mode in modes.items():
        if mode == "int8":
            op = sg.operators[i]
            keep.update((int(op.inputs[0]), int(op.outputs[0])))
    float32 = _schema().TensorType.FLOAT32
    for j, t in enumerate(sg.tensors):
        if j not in keep and t.type == float32:
            t.quantization = None
    others = sorted({_op_name(m, op) for op in sg.operators} - {"FULLY_CONNECTED"})
    if keep:
        model = tfl_convert.mlir_quantize(_write(m), denylisted_ops=others)
    else:
        model = _write(m)
    # the quantizer keeps op order for float ops but inserts QUANTIZE/DEQUANTIZE: find matmuls again
    m = _read(model)
    sg = m.subgraphs[0]
    by_name = {}
    for i, op in enumerate(sg.operators):
        if _op_name(m, op) == "FULLY_CONNECTED":
            by_name[sg.tensors[op.outputs[0]].name] = op
    cal = _read(calibrated)
    csg = cal.subgraphs[0]
    for i, mode in modes.items():
        if mode == "dynamic":
            op = by_name.get(csg.tensors[csg.operators[i].outputs[0]].name)
            if op is None or _float_buffer(m, sg.tensors[op.inputs[1]]) is None:
                raise RuntimeError(f"matmul {names[i]!r} lost its float weights during quantization")
            _hybridize(m, op)
    _drop_fake_quant(m)
    # the calibration statistics left on float tensors mean nothing to a runtime: drop them
    for t in sg.tensors:
        if t.type == float32 and t.quantization is not None:
            t.quantization = None
    return _write(m), {names[i]: modes[i] for i in sorted(modes)}


def matmul_kinds(model_bytes: bytes) -> list[dict]:
    """Every FULLY_CONNECTED of a TFLite model, in order: weight shape and type, input and output
    type ("int8" x "int8": static int8; float input with int8 weights: dynamic-range)."""
    m = _read(model_bytes)
    sg = m.subgraphs[0]
    types = {v: k.lower() for k, v in vars(_schema().TensorType).items() if not k.startswith("_")}
    rows = []
    for op in sg.operators:
        if _op_name(m, op) == "FULLY_CONNECTED":
            w, x, y = (sg.tensors[op.inputs[1]], sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]])
            rows.append({"weights": [int(s) for s in w.shape], "weight_type": types[w.type], "input_type": types[x.type],
                         "output_type": types[y.type]})
    return rows


def consumers_of_inputs(model_bytes: bytes) -> dict[str, list[str]]:
    """{model input tensor name: op kinds that read it}: shows whether audio, knobs or state are
    quantized on the way in."""
    m = _read(model_bytes)
    sg = m.subgraphs[0]
    out = {}
    for i in sg.inputs:
        name = sg.tensors[i].name.decode()
        out[name] = [_op_name(m, op) for op in sg.operators if op.inputs is not None and int(i) in [int(t) for t in op.inputs]]
    return out
