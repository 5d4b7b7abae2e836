//! Checks that a loaded model is runnable before the executor touches it: indices in
//! range, each value produced once and before use, and every op's parameters and shapes
//! consistent. A file that passes its checksums but was crafted (or written by a buggy
//! converter) is rejected here with a message, never a panic later.

use crate::format::meta::{DType, ModelMeta};
use crate::graph::op::{winograd_weights_direct, Op, Window, PACK_LANES, QPACK_GROUP};

fn padded(n: usize) -> usize {
    n.div_ceil(PACK_LANES) * PACK_LANES
}

fn pool_out(w: &Window, h: usize, wd: usize, ceil: bool) -> Option<(usize, usize)> {
    let fix = |o: usize, axis: usize, size: usize| {
        if ceil && o > 1 && (o - 1) * w.stride[axis] >= size + w.pads[axis] {
            o - 1
        } else {
            o
        }
    };
    let oh = w.out_extent(0, h, ceil)?;
    let ow = w.out_extent(1, wd, ceil)?;
    Some((fix(oh, 0, h), fix(ow, 1, wd)))
}

fn window_ok(w: &Window) -> bool {
    w.kernel.iter().all(|&k| (1..=1024).contains(&k))
        && w.stride.iter().all(|&s| (1..=1024).contains(&s))
        && w.dilation.iter().all(|&d| (1..=1024).contains(&d))
        && w.pads.iter().all(|&p| p <= 4096)
}

/// Upper bound on any per-sample tensor, to refuse absurd shapes before allocating.
const MAX_ELEMENTS: usize = 1 << 31;

pub fn validate(meta: &ModelMeta) -> Result<(), String> {
    let nv = meta.values.len();
    let nt = meta.tensors.len();
    for (i, v) in meta.values.iter().enumerate() {
        let n = v.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        match n {
            Some(n) if n > 0 && n <= MAX_ELEMENTS => {}
            _ => return Err(format!("value {i} ({}) has an invalid shape {:?}", v.name, v.shape)),
        }
    }
    for t in &meta.tensors {
        if !matches!(t.dtype, DType::F32 | DType::F16 | DType::I8 | DType::I32) {
            return Err(format!(
                "tensor {} has dtype {:?}; this engine reads f32, f16, i8 and i32 parameters",
                t.name, t.dtype
            ));
        }
    }
    for (i, v) in meta.values.iter().enumerate() {
        if let Some(q) = v.quant {
            q.check()
                .map_err(|e| format!("value {i} ({}) has an invalid quantization grid: {e}", v.name))?;
        }
    }
    for io in meta.inputs.iter().chain(&meta.outputs) {
        if meta.values.get(io.value).is_some_and(|v| v.quant.is_some()) {
            return Err(format!(
                "model input or output {} is stored quantized; the interface is f32",
                io.name
            ));
        }
    }
    let mut produced = vec![false; nv];
    for io in &meta.inputs {
        if io.value >= nv {
            return Err(format!("input {} refers to value {} of {nv}", io.name, io.value));
        }
        if meta.values[io.value].shape != io.shape {
            return Err(format!("input {} shape disagrees with its value", io.name));
        }
        if let Some(f) = &io.features {
            if io.shape != [f.len()] {
                return Err(format!(
                    "input {} names {} features for shape {:?}",
                    io.name,
                    f.len(),
                    io.shape
                ));
            }
            for feat in f {
                if !(feat.min.is_finite() && feat.max.is_finite() && feat.min < feat.max) {
                    return Err(format!("feature {} has an invalid range", feat.name));
                }
            }
        }
        if let Some(im) = &io.image {
            if io.shape != [3, im.height, im.width] || im.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
                return Err(format!("input {} has inconsistent image preprocessing", io.name));
            }
        }
        produced[io.value] = true;
    }
    for (i, n) in meta.nodes.iter().enumerate() {
        let ctx = |m: String| format!("node {i} ({}, {}): {m}", n.name, n.op.kind());
        for &v in &n.inputs {
            if v >= nv {
                return Err(ctx(format!("reads value {v} of {nv}")));
            }
            if !produced[v] {
                return Err(ctx(format!("reads value {v} before anything writes it")));
            }
        }
        if n.outputs.len() != 1 {
            return Err(ctx("must have exactly one output".into()));
        }
        let out = n.outputs[0];
        if out >= nv || produced[out] {
            return Err(ctx(format!(
                "writes value {out}, which is out of range or already written"
            )));
        }
        if n.inputs.contains(&out) {
            return Err(ctx("reads its own output".into()));
        }
        for &p in &n.params {
            if p >= nt {
                return Err(ctx(format!("uses tensor {p} of {nt}")));
            }
        }
        let shape = |v: usize| meta.values[v].shape.as_slice();
        let os = shape(out);
        let want_inputs = |k: &[usize]| -> Result<(), String> {
            if k.contains(&n.inputs.len()) {
                Ok(())
            } else {
                Err(ctx(format!("has {} inputs", n.inputs.len())))
            }
        };
        let tensor_dims = |k: usize| -> Result<&[usize], String> {
            n.params
                .get(k)
                .map(|&p| meta.tensors[p].dims.as_slice())
                .ok_or_else(|| ctx(format!("is missing parameter {k}")))
        };
        let is_quantized = |v: usize| meta.values[v].quant.is_some();
        let param_dtype = |k: usize| n.params.get(k).map(|&p| meta.tensors[p].dtype);
        // Which values are u8 and which parameters are which type is fixed by the op.
        match &n.op {
            Op::QConv { .. } => {
                if !is_quantized(n.inputs[0]) {
                    return Err(ctx(
                        "reads an f32 input; an INT8 convolution reads a quantized one".into()
                    ));
                }
                if [param_dtype(0), param_dtype(1), param_dtype(2)]
                    != [Some(DType::I8), Some(DType::I32), Some(DType::F32)]
                {
                    return Err(ctx("parameters are not [i8 weight, i32 bias, f32 scale]".into()));
                }
            }
            Op::Quantize => {
                if is_quantized(n.inputs[0]) || !is_quantized(out) {
                    return Err(ctx("must turn an f32 value into a quantized one".into()));
                }
            }
            _ => {
                if n.inputs.iter().chain(&n.outputs).any(|&v| is_quantized(v)) {
                    return Err(ctx("reads or writes a quantized value; only INT8 ops do".into()));
                }
                let float = |d: Option<DType>| matches!(d, Some(DType::F32 | DType::F16));
                if !n.params.iter().enumerate().all(|(k, _)| float(param_dtype(k))) {
                    return Err(ctx("has non-float parameters".into()));
                }
            }
        }
        match &n.op {
            Op::Quantize => {
                want_inputs(&[1])?;
                if shape(n.inputs[0]) != os {
                    return Err(ctx("shape changes".into()));
                }
            }
            Op::Conv { cin, cout, window, .. }
            | Op::QConv { cin, cout, window, .. }
            | Op::ConvWinograd { cin, cout, window, .. } => {
                want_inputs(&[1, 2])?;
                if !window_ok(window) || *cin == 0 || *cout == 0 {
                    return Err(ctx("invalid geometry".into()));
                }
                let winograd = matches!(n.op, Op::ConvWinograd { .. });
                if winograd && !window.is_winograd_3x3() {
                    return Err(ctx("Winograd convolution with a window other than 3x3 stride 1".into()));
                }
                let is = shape(n.inputs[0]);
                if is.len() != 3 || is[0] != *cin {
                    return Err(ctx(format!("input shape {is:?} does not have {cin} channels")));
                }
                let (oh, ow) =
                    pool_out(window, is[1], is[2], false).ok_or_else(|| ctx("window does not fit".into()))?;
                if os != [*cout, oh, ow] {
                    return Err(ctx(format!("output shape {os:?}, expected {:?}", [*cout, oh, ow])));
                }
                if n.inputs.len() == 2 && shape(n.inputs[1]) != os {
                    return Err(ctx("residual shape differs from the output".into()));
                }
                let [kh, kw] = window.kernel;
                if let Op::QConv { .. } = n.op {
                    let groups = cin.div_ceil(QPACK_GROUP);
                    let reduction = kh * kw * groups * QPACK_GROUP;
                    let limit = match meta.values[n.inputs[0]].quant {
                        Some(q) if q.is_wide() => qp_kernels::qconv::max_reduction_i16(q.max()),
                        _ => qp_kernels::qconv::MAX_REDUCTION,
                    };
                    if reduction > limit {
                        return Err(ctx(format!(
                            "reduction of {reduction} products too long for exact i32 accumulation on its \
                             input's grid (at most {limit})"
                        )));
                    }
                    if tensor_dims(0)? != [padded(*cout) / PACK_LANES, kh, kw, groups, PACK_LANES, QPACK_GROUP] {
                        return Err(ctx(format!(
                            "weight dims {:?} do not match the packed INT8 layout",
                            tensor_dims(0)?
                        )));
                    }
                    if tensor_dims(1)? != [padded(*cout)] || tensor_dims(2)? != [padded(*cout)] {
                        return Err(ctx("bias or scale dims do not match".into()));
                    }
                } else if winograd {
                    let points = qp_kernels::conv::WINOGRAD_POINTS;
                    let dims = tensor_dims(0)?;
                    if dims != [padded(*cout) / PACK_LANES, points, *cin, PACK_LANES]
                        && !winograd_weights_direct(dims, *cin, *cout)
                    {
                        return Err(ctx(format!(
                            "weight dims {dims:?} match neither the packed Winograd layout nor the direct one"
                        )));
                    }
                } else if tensor_dims(0)? != [padded(*cout) / PACK_LANES, kh, kw, *cin, PACK_LANES] {
                    return Err(ctx(format!(
                        "weight dims {:?} do not match the packed layout",
                        tensor_dims(0)?
                    )));
                }
                if tensor_dims(1)? != [padded(*cout)] {
                    return Err(ctx("bias dims do not match".into()));
                }
            }
            Op::Dense { input, output, .. } => {
                want_inputs(&[1])?;
                if shape(n.inputs[0]) != [*input] || os != [*output] {
                    return Err(ctx(format!(
                        "shapes {:?} -> {os:?} do not match {input} -> {output}",
                        shape(n.inputs[0])
                    )));
                }
                if tensor_dims(0)? != [padded(*output) / PACK_LANES, *input, PACK_LANES]
                    || tensor_dims(1)? != [padded(*output)]
                {
                    return Err(ctx("parameter dims do not match the packed layout".into()));
                }
            }
            Op::MaxPool { window, ceil_mode } | Op::AveragePool { window, ceil_mode, .. } => {
                want_inputs(&[1])?;
                let is = shape(n.inputs[0]);
                if !window_ok(window) || is.len() != 3 {
                    return Err(ctx("invalid pooling geometry".into()));
                }
                if matches!(n.op, Op::AveragePool { .. }) && window.dilation != [1, 1] {
                    return Err(ctx("average pooling with dilation".into()));
                }
                let (oh, ow) =
                    pool_out(window, is[1], is[2], *ceil_mode).ok_or_else(|| ctx("window does not fit".into()))?;
                if os != [is[0], oh, ow] {
                    return Err(ctx(format!("output shape {os:?}, expected {:?}", [is[0], oh, ow])));
                }
                // Every window must have a tap inside the input (with dilation, a window can
                // straddle the input without touching it), or max pooling has no value to take.
                for (axis, o, size) in [(0, oh, is[1]), (1, ow, is[2])] {
                    let touches = |out: usize| {
                        let start = (out * window.stride[axis]) as isize - window.pads[axis] as isize;
                        (0..window.kernel[axis]).any(|k| {
                            let i = start + (k * window.dilation[axis]) as isize;
                            i >= 0 && i < size as isize
                        })
                    };
                    if !(0..o).all(touches) {
                        return Err(ctx("a pooling window lies entirely in the padding".into()));
                    }
                }
            }
            Op::GlobalAveragePool => {
                want_inputs(&[1])?;
                let is = shape(n.inputs[0]);
                if is.len() != 3 || os != [is[0], 1, 1] {
                    return Err(ctx("shapes do not match".into()));
                }
            }
            Op::Add { .. } => {
                want_inputs(&[2])?;
                if shape(n.inputs[0]) != os || shape(n.inputs[1]) != os {
                    return Err(ctx("operand shapes differ".into()));
                }
            }
            Op::Relu | Op::Sigmoid => {
                want_inputs(&[1])?;
                if shape(n.inputs[0]) != os {
                    return Err(ctx("shape changes".into()));
                }
            }
            Op::Reshape => {
                want_inputs(&[1])?;
                let a: usize = shape(n.inputs[0]).iter().product();
                let b: usize = os.iter().product();
                if a != b {
                    return Err(ctx("element counts differ".into()));
                }
            }
            Op::Concat { axis } => {
                if n.inputs.is_empty() {
                    return Err(ctx("no inputs".into()));
                }
                let mut total = 0;
                for &v in &n.inputs {
                    let s = shape(v);
                    if s.len() != os.len() || *axis >= s.len() || (0..s.len()).any(|k| k != *axis && s[k] != os[k]) {
                        return Err(ctx("operand shapes do not concatenate".into()));
                    }
                    total += s[*axis];
                }
                if total != os[*axis] {
                    return Err(ctx("output extent is not the sum of the inputs".into()));
                }
            }
        }
        produced[out] = true;
    }
    // A conv_winograd's direct weights are transformed at load (`exec::params`); another
    // node reading that tensor as stored would get the transformed values.
    for (i, n) in meta.nodes.iter().enumerate() {
        let Op::ConvWinograd { cin, cout, .. } = n.op else {
            continue;
        };
        let w = n.params[0];
        if !winograd_weights_direct(&meta.tensors[w].dims, cin, cout) {
            continue;
        }
        let as_stored = |m: &crate::format::meta::NodeSpec| {
            let winograd_weight = matches!(m.op, Op::ConvWinograd { .. }) && m.params[0] == w;
            !winograd_weight && m.params.contains(&w)
        };
        if let Some(other) = meta.nodes.iter().find(|m| as_stored(m)) {
            return Err(format!(
                "node {i} ({}, conv_winograd): its direct weights {} are transformed at load, and node {} ({}) reads them as stored",
                n.name, meta.tensors[w].name, other.name, other.op.kind()
            ));
        }
    }
    for io in &meta.outputs {
        if io.value >= nv || !produced[io.value] {
            return Err(format!("output {} is never written", io.name));
        }
        if meta.values[io.value].shape != io.shape {
            return Err(format!("output {} shape disagrees with its value", io.name));
        }
    }
    let mut names = std::collections::HashSet::new();
    for io in meta.inputs.iter().chain(&meta.outputs) {
        if !names.insert(io.name.as_str()) && meta.inputs.iter().any(|i| i.name == io.name) {
            return Err(format!("name {} is used twice", io.name));
        }
    }
    Ok(())
}
