//! Shape inference with constant folding. Walks the graph in order; a node whose
//! result is computable at conversion time (shape arithmetic, reshapes of constants, ...)
//! becomes a constant and disappears, every other node gets its output shapes. Shapes carry
//! the symbolic batch, so `Shape -> Gather -> Concat -> Reshape` chains fold for any batch.

use anyhow::{anyhow, bail, Context, Result};

use crate::graph::ir::{shape_str, AutoPad, Const, Dim, Graph, IrOp, Node, SymInt, ValueId};
use crate::graph::op::Window;

pub fn run(g: &mut Graph) -> Result<()> {
    let mut keep = Vec::with_capacity(g.nodes.len());
    let nodes = std::mem::take(&mut g.nodes);
    for mut node in nodes {
        let folded = fold(g, &node).with_context(|| format!("folding {} node {:?}", node.onnx_type, node.name))?;
        if let Some(consts) = folded {
            for (&out, c) in node.outputs.iter().zip(consts) {
                g.values[out].constant = Some(c);
            }
            continue;
        }
        let shapes = infer(g, &mut node).with_context(|| format!("{} node {:?}", node.onnx_type, node.name))?;
        for (&out, s) in node.outputs.iter().zip(shapes) {
            g.values[out].shape = Some(s);
        }
        keep.push(node);
    }
    g.nodes = keep;
    for o in &g.outputs {
        let v = &g.values[o.value];
        if v.constant.is_some() {
            bail!(
                "output {:?} is a constant, independent of the inputs; not supported",
                o.name
            );
        }
    }
    Ok(())
}

/// Shape of a value: activations from inference, constants from their dims.
pub fn value_shape(g: &Graph, v: ValueId) -> Result<Vec<Dim>> {
    if let Some(c) = g.constant(v) {
        return Ok(c.dims().iter().map(|&d| Dim::Known(d)).collect());
    }
    g.shape(v)
        .map(|s| s.to_vec())
        .ok_or_else(|| anyhow!("shape of {:?} is unknown", g.values[v].name))
}

fn input(g: &Graph, n: &Node, i: usize) -> Result<ValueId> {
    n.input(i).ok_or_else(|| anyhow!("input {i} is missing")).and_then(|v| {
        if v < g.values.len() {
            Ok(v)
        } else {
            Err(anyhow!("bad value id"))
        }
    })
}

fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(a as usize)
}

fn sym_of_dim(d: Dim) -> SymInt {
    match d {
        Dim::Batch => SymInt::Batch,
        Dim::Known(k) => SymInt::Known(k as i64),
    }
}

/// Evaluates the node at conversion time if it can be; `None` if it must run.
fn fold(g: &Graph, n: &Node) -> Result<Option<Vec<Const>>> {
    let all_const = n.inputs.iter().flatten().all(|&v| g.constant(v).is_some());
    let c = |i: usize| -> Result<&Const> {
        g.constant(input(g, n, i)?)
            .ok_or_else(|| anyhow!("input {i} is not constant"))
    };
    Ok(Some(vec![match &n.op {
        IrOp::Shape { start, end } => {
            let s = value_shape(g, input(g, n, 0)?)?;
            let r = s.len() as i64;
            let clamp = |x: i64| -> usize { (if x < 0 { x + r } else { x }).clamp(0, r) as usize };
            let (a, b) = (clamp(*start), clamp(end.unwrap_or(r)));
            let data: Vec<SymInt> = s[a..b.max(a)].iter().map(|&d| sym_of_dim(d)).collect();
            Const::Int {
                dims: vec![data.len()],
                data,
            }
        }
        _ if !all_const => return Ok(None),
        IrOp::Identity => c(0)?.clone(),
        IrOp::Cast => match c(0)? {
            Const::F32 { dims, data } => Const::Int {
                dims: dims.clone(),
                data: data.iter().map(|&f| SymInt::Known(f as i64)).collect(),
            },
            i @ Const::Int { .. } => i.clone(),
        },
        IrOp::Gather { axis } => {
            let data = c(0)?;
            let idx = c(1)?.as_ints().ok_or_else(|| anyhow!("indices are not integers"))?;
            if data.dims().len() != 1 || norm_axis(*axis, 1)? != 0 {
                return Ok(None);
            }
            let len = data.numel() as i64;
            let pick = |i: i64| -> Result<usize> {
                let j = if i < 0 { i + len } else { i };
                if j < 0 || j >= len {
                    bail!("index {i} out of range for {len} elements");
                }
                Ok(j as usize)
            };
            let out_dims = c(1)?.dims().to_vec();
            match data {
                Const::Int { data, .. } => Const::Int {
                    dims: out_dims,
                    data: idx.iter().map(|&i| pick(i).map(|j| data[j])).collect::<Result<_>>()?,
                },
                Const::F32 { data, .. } => Const::F32 {
                    dims: out_dims,
                    data: idx.iter().map(|&i| pick(i).map(|j| data[j])).collect::<Result<_>>()?,
                },
            }
        }
        IrOp::Unsqueeze { axes } | IrOp::Squeeze { axes } => {
            let x = c(0)?;
            let axes = match axes {
                Some(a) => a.clone(),
                None => match n.input(1) {
                    Some(v) => g
                        .constant(v)
                        .and_then(|c| c.as_ints())
                        .ok_or_else(|| anyhow!("axes are not constant integers"))?,
                    None => vec![],
                },
            };
            let dims = if matches!(n.op, IrOp::Unsqueeze { .. }) {
                unsqueeze_dims(x.dims(), &axes)?
            } else {
                squeeze_dims(x.dims(), &axes)?
            };
            with_dims(x, dims)
        }
        IrOp::Concat { axis } => {
            let parts: Vec<&Const> = (0..n.inputs.len()).map(c).collect::<Result<_>>()?;
            if parts.iter().any(|p| p.dims().len() > 1) {
                return Ok(None);
            }
            norm_axis(*axis, 1)?;
            if parts.iter().all(|p| matches!(p, Const::Int { .. })) {
                let data: Vec<SymInt> = parts
                    .iter()
                    .flat_map(|p| p.as_sym_ints().unwrap_or(&[]).to_vec())
                    .collect();
                Const::Int {
                    dims: vec![data.len()],
                    data,
                }
            } else {
                let data: Vec<f32> = parts
                    .iter()
                    .map(|p| match p {
                        Const::F32 { data, .. } => Ok(data.clone()),
                        Const::Int { .. } => Err(anyhow!("mixed-type constant Concat")),
                    })
                    .collect::<Result<Vec<_>>>()?
                    .concat();
                Const::F32 {
                    dims: vec![data.len()],
                    data,
                }
            }
        }
        IrOp::Reshape { allow_zero } => {
            let x = c(0)?;
            let target: Vec<SymInt> = c(1)?
                .as_ints()
                .ok_or_else(|| anyhow!("target shape is not known"))?
                .into_iter()
                .map(SymInt::Known)
                .collect();
            let dims_in: Vec<Dim> = x.dims().iter().map(|&d| Dim::Known(d)).collect();
            let out = reshape_dims(&dims_in, &target, *allow_zero, None)?;
            with_dims(
                x,
                out.iter()
                    .map(|d| match d {
                        Dim::Known(k) => *k,
                        Dim::Batch => 0,
                    })
                    .collect(),
            )
        }
        IrOp::Flatten { axis } => {
            let x = c(0)?;
            let a = if *axis < 0 {
                *axis + x.dims().len() as i64
            } else {
                *axis
            } as usize;
            let lead: usize = x.dims()[..a.min(x.dims().len())].iter().product();
            with_dims(x, vec![lead, x.numel() / lead.max(1)])
        }
        _ => return Ok(None),
    }]))
}

fn with_dims(c: &Const, dims: Vec<usize>) -> Const {
    match c {
        Const::F32 { data, .. } => Const::F32 {
            dims,
            data: data.clone(),
        },
        Const::Int { data, .. } => Const::Int {
            dims,
            data: data.clone(),
        },
    }
}

fn unsqueeze_dims(dims: &[usize], axes: &[i64]) -> Result<Vec<usize>> {
    let out_rank = dims.len() + axes.len();
    let mut axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, out_rank)).collect::<Result<_>>()?;
    axes.sort_unstable();
    let mut out = Vec::with_capacity(out_rank);
    let mut it = dims.iter();
    for i in 0..out_rank {
        if axes.binary_search(&i).is_ok() {
            out.push(1);
        } else {
            out.push(*it.next().ok_or_else(|| anyhow!("bad unsqueeze axes"))?);
        }
    }
    Ok(out)
}

fn squeeze_dims(dims: &[usize], axes: &[i64]) -> Result<Vec<usize>> {
    if axes.is_empty() {
        return Ok(dims.iter().copied().filter(|&d| d != 1).collect());
    }
    let axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, dims.len())).collect::<Result<_>>()?;
    Ok(dims
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect())
}

/// ONNX Reshape on a shape that may hold the symbolic batch. The batch must end up alone
/// on axis 0 (a reshape that folds the batch into another axis cannot run for every batch).
pub fn reshape_dims(
    input: &[Dim],
    target: &[SymInt],
    allow_zero: bool,
    static_batch: Option<usize>,
) -> Result<Vec<Dim>> {
    let has_batch = input.contains(&Dim::Batch);
    let known_in: usize = input
        .iter()
        .map(|d| if let Dim::Known(k) = d { *k } else { 1 })
        .product();
    let mut out: Vec<Option<Dim>> = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        let t = match t {
            SymInt::Batch => {
                out.push(Some(Dim::Batch));
                continue;
            }
            SymInt::Known(k) => k,
        };
        out.push(match t {
            -1 => {
                if infer_at.replace(i).is_some() {
                    bail!("more than one -1 in reshape target {target:?}");
                }
                None
            }
            0 if !allow_zero => Some(
                *input
                    .get(i)
                    .ok_or_else(|| anyhow!("reshape target {target:?}: 0 at axis {i} copies a missing input axis"))?,
            ),
            t if t < 0 => bail!("reshape target {target:?} has a negative entry"),
            t => {
                // A model exported with a fixed batch B spells the batch as B.
                if i == 0 && has_batch && static_batch == Some(t as usize) {
                    Some(Dim::Batch)
                } else {
                    Some(Dim::Known(t as usize))
                }
            }
        });
    }
    let out_has_batch = out.contains(&Some(Dim::Batch));
    let known_out: usize = out
        .iter()
        .map(|d| if let Some(Dim::Known(k)) = d { *k } else { 1 })
        .product();
    if let Some(i) = infer_at {
        if has_batch && !out_has_batch {
            // -1 must absorb the batch: only if the rest matches exactly.
            if known_out == 0 || !known_in.is_multiple_of(known_out) || known_in / known_out != 1 {
                bail!(
                    "reshape {} -> {target:?} merges the batch into another axis; not supported",
                    shape_str(input)
                );
            }
            out[i] = Some(Dim::Batch);
        } else {
            if known_out == 0 || !known_in.is_multiple_of(known_out) {
                bail!("reshape {} -> {target:?}: sizes do not divide", shape_str(input));
            }
            out[i] = Some(Dim::Known(known_in / known_out));
        }
    } else if known_in != known_out || has_batch != out_has_batch {
        bail!("reshape {} -> {target:?}: element counts differ", shape_str(input));
    }
    let out: Vec<Dim> = out.into_iter().map(|d| d.expect("filled")).collect();
    if has_batch && out.first() != Some(&Dim::Batch) {
        bail!(
            "reshape {} -> {target:?} moves the batch axis; not supported",
            shape_str(input)
        );
    }
    Ok(out)
}

fn known(d: Dim, what: &str) -> Result<usize> {
    match d {
        Dim::Known(k) => Ok(k),
        Dim::Batch => bail!("{what} is the batch axis"),
    }
}

fn rank4(s: &[Dim], what: &str) -> Result<(usize, usize, usize)> {
    if s.len() != 4 || s[0] != Dim::Batch {
        bail!("{what} has shape {}; expected [N,C,H,W]", shape_str(s));
    }
    Ok((known(s[1], "C")?, known(s[2], "H")?, known(s[3], "W")?))
}

/// Turns auto_pad into explicit pads for this input size.
fn resolve_auto_pad(w: &mut Window, auto_pad: &mut AutoPad, h: usize, wd: usize) {
    let mode = *auto_pad;
    if mode == AutoPad::NotSet {
        return;
    }
    for (axis, size) in [(0usize, h), (1usize, wd)] {
        let (begin, end) = match mode {
            AutoPad::Valid | AutoPad::NotSet => (0, 0),
            AutoPad::SameUpper | AutoPad::SameLower => {
                let out = size.div_ceil(w.stride[axis]);
                let span = w.dilation[axis] * (w.kernel[axis] - 1) + 1;
                let total = ((out - 1) * w.stride[axis] + span).saturating_sub(size);
                if mode == AutoPad::SameUpper {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                }
            }
        };
        w.pads[axis] = begin;
        w.pads[axis + 2] = end;
    }
    *auto_pad = AutoPad::NotSet;
}

fn window_out(w: &Window, h: usize, wd: usize, ceil: bool) -> Result<(usize, usize)> {
    let oh = w.out_extent(0, h, ceil);
    let ow = w.out_extent(1, wd, ceil);
    match (oh, ow) {
        (Some(oh), Some(ow)) if oh > 0 && ow > 0 => {
            // ONNX ceil mode: a last window starting inside the end padding is dropped.
            let fix = |o: usize, axis: usize, size: usize| {
                if ceil && (o - 1) * w.stride[axis] >= size + w.pads[axis] {
                    o - 1
                } else {
                    o
                }
            };
            Ok((fix(oh, 0, h), fix(ow, 1, wd)))
        }
        _ => bail!(
            "window {:?} (dilation {:?}, pads {:?}) does not fit a {h}x{wd} input",
            w.kernel,
            w.dilation,
            w.pads
        ),
    }
}

pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>> {
    let r = a.len().max(b.len());
    let mut out = vec![Dim::Known(1); r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            Dim::Known(1)
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            Dim::Known(1)
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (Dim::Known(1), y) => y,
            (x, Dim::Known(1)) => x,
            _ => bail!("shapes {} and {} do not broadcast", shape_str(a), shape_str(b)),
        };
    }
    Ok(out)
}

/// Output shapes of a node that runs at inference time. May normalize attributes
/// (auto_pad, Conv kernel size taken from the weights).
fn infer(g: &Graph, node: &mut Node) -> Result<Vec<Vec<Dim>>> {
    let mut op = node.op.clone();
    let shapes = infer_op(g, node, &mut op)?;
    node.op = op;
    Ok(shapes)
}

fn infer_op(g: &Graph, n: &Node, op: &mut IrOp) -> Result<Vec<Vec<Dim>>> {
    let shape = |i: usize| -> Result<Vec<Dim>> { value_shape(g, input(g, n, i)?) };
    let x = shape(0)?;
    let out = match op {
        IrOp::Conv { window, auto_pad, .. } => {
            let (c, h, wd) = rank4(&x, "Conv input")?;
            let wv = input(g, n, 1)?;
            let w = g
                .constant(wv)
                .ok_or_else(|| anyhow!("Conv weights must be a constant (initializer)"))?;
            let wd_ = w.dims();
            if wd_.len() != 4 {
                bail!("Conv weight has shape {wd_:?}; only 2-D convolution is supported");
            }
            if wd_[1] != c {
                bail!(
                    "Conv weight {wd_:?} expects {} input channels, the input has {c}",
                    wd_[1]
                );
            }
            if window.kernel == [0, 0] {
                window.kernel = [wd_[2], wd_[3]];
            } else if window.kernel != [wd_[2], wd_[3]] {
                bail!(
                    "kernel_shape {:?} disagrees with the weight shape {wd_:?}",
                    window.kernel
                );
            }
            if let Some(b) = n.inputs.get(2).copied().flatten() {
                let bc = g.constant(b).ok_or_else(|| anyhow!("Conv bias must be a constant"))?;
                if bc.numel() != wd_[0] {
                    bail!("Conv bias has {} values for {} output channels", bc.numel(), wd_[0]);
                }
            }
            resolve_auto_pad(window, auto_pad, h, wd);
            let (oh, ow) = window_out(window, h, wd, false)?;
            vec![Dim::Batch, Dim::Known(wd_[0]), Dim::Known(oh), Dim::Known(ow)]
        }
        IrOp::MaxPool {
            window,
            auto_pad,
            ceil_mode,
        } => {
            let (c, h, wd) = rank4(&x, "MaxPool input")?;
            resolve_auto_pad(window, auto_pad, h, wd);
            let (oh, ow) = window_out(window, h, wd, *ceil_mode)?;
            vec![Dim::Batch, Dim::Known(c), Dim::Known(oh), Dim::Known(ow)]
        }
        IrOp::AveragePool {
            window,
            auto_pad,
            ceil_mode,
            ..
        } => {
            let (c, h, wd) = rank4(&x, "AveragePool input")?;
            if window.dilation != [1, 1] {
                bail!("AveragePool with dilations is not supported");
            }
            resolve_auto_pad(window, auto_pad, h, wd);
            let (oh, ow) = window_out(window, h, wd, *ceil_mode)?;
            vec![Dim::Batch, Dim::Known(c), Dim::Known(oh), Dim::Known(ow)]
        }
        IrOp::GlobalAveragePool => {
            let (c, _, _) = rank4(&x, "GlobalAveragePool input")?;
            vec![Dim::Batch, Dim::Known(c), Dim::Known(1), Dim::Known(1)]
        }
        IrOp::BatchNorm { .. } => {
            if x.len() < 2 {
                bail!("BatchNormalization input has rank {}", x.len());
            }
            let c = known(x[1], "channel axis")?;
            for i in 1..5 {
                let v = input(g, n, i)?;
                let k = g
                    .constant(v)
                    .ok_or_else(|| anyhow!("BatchNormalization parameters must be constants"))?;
                if k.numel() != c {
                    bail!(
                        "BatchNormalization parameter {i} has {} values for {c} channels",
                        k.numel()
                    );
                }
            }
            x
        }
        IrOp::Relu | IrOp::Sigmoid | IrOp::Identity => x,
        IrOp::Add { .. } => broadcast(&x, &shape(1)?)?,
        IrOp::Flatten { axis } => {
            let a = if *axis < 0 { *axis + x.len() as i64 } else { *axis };
            if a != 1 || x.first() != Some(&Dim::Batch) {
                bail!(
                    "Flatten axis {axis} on {}: only flattening after the batch axis is supported",
                    shape_str(&x)
                );
            }
            let rest: usize = x[1..].iter().map(|&d| known(d, "axis")).product::<Result<usize>>()?;
            vec![Dim::Batch, Dim::Known(rest)]
        }
        IrOp::Reshape { allow_zero } => {
            let t = g
                .constant(input(g, n, 1)?)
                .ok_or_else(|| anyhow!("Reshape target shape must be computable at conversion time"))?;
            let target: Vec<SymInt> = match t.as_sym_ints() {
                Some(sy) => sy.to_vec(),
                None => t
                    .as_ints()
                    .ok_or_else(|| anyhow!("Reshape target is not integer"))?
                    .into_iter()
                    .map(SymInt::Known)
                    .collect(),
            };
            reshape_dims(&x, &target, *allow_zero, g.static_batch)?
        }
        IrOp::Concat { axis } => {
            let mut out = x.clone();
            let a = norm_axis(*axis, x.len())?;
            if x.first() == Some(&Dim::Batch) && a == 0 {
                bail!("Concat along the batch axis is not supported");
            }
            let mut total = known(x[a], "concat axis")?;
            for i in 1..n.inputs.len() {
                let s = shape(i)?;
                if s.len() != x.len() || (0..s.len()).any(|k| k != a && s[k] != x[k]) {
                    bail!(
                        "Concat inputs {} and {} differ off axis {a}",
                        shape_str(&x),
                        shape_str(&s)
                    );
                }
                total += known(s[a], "concat axis")?;
            }
            out[a] = Dim::Known(total);
            out
        }
        IrOp::Gemm { trans_a, trans_b, .. } => {
            if *trans_a {
                bail!("Gemm with transA=1 is not supported");
            }
            if x.len() != 2 {
                bail!("Gemm input A has shape {}; expected 2-D", shape_str(&x));
            }
            let b = g
                .constant(input(g, n, 1)?)
                .ok_or_else(|| anyhow!("Gemm B must be a constant (initializer)"))?;
            let bd = b.dims();
            if bd.len() != 2 {
                bail!("Gemm B has shape {bd:?}");
            }
            let (k, out) = if *trans_b { (bd[1], bd[0]) } else { (bd[0], bd[1]) };
            if x[1] != Dim::Known(k) {
                bail!(
                    "Gemm A {} does not match B {bd:?} (transB={})",
                    shape_str(&x),
                    *trans_b as u8
                );
            }
            vec![x[0], Dim::Known(out)]
        }
        IrOp::MatMul => {
            let b = g
                .constant(input(g, n, 1)?)
                .ok_or_else(|| anyhow!("MatMul with two activation inputs is not supported (B must be a constant)"))?;
            let bd = b.dims();
            if bd.len() != 2 || x.len() < 2 {
                bail!(
                    "MatMul {} x {bd:?}: only [.., K] x [K, M] with a constant B is supported",
                    shape_str(&x)
                );
            }
            if x[x.len() - 1] != Dim::Known(bd[0]) {
                bail!("MatMul shapes {} and {bd:?} do not match", shape_str(&x));
            }
            let mut out = x.clone();
            *out.last_mut().expect("rank >= 2") = Dim::Known(bd[1]);
            out
        }
        IrOp::Dense { .. } => {
            let w = g
                .constant(input(g, n, 1)?)
                .ok_or_else(|| anyhow!("Dense weight must be constant"))?;
            vec![x[0], Dim::Known(w.dims()[0])]
        }
        IrOp::Unsqueeze { axes } | IrOp::Squeeze { axes } => {
            let axes = match axes {
                Some(a) => a.clone(),
                None => match n.input(1) {
                    Some(v) => g
                        .constant(v)
                        .and_then(|c| c.as_ints())
                        .ok_or_else(|| anyhow!("axes must be constant integers"))?,
                    None => vec![],
                },
            };
            let out = if matches!(op, IrOp::Unsqueeze { .. }) {
                let rank = x.len() + axes.len();
                let mut axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, rank)).collect::<Result<_>>()?;
                axes.sort_unstable();
                let mut it = x.iter();
                (0..rank)
                    .map(|i| {
                        if axes.binary_search(&i).is_ok() {
                            Some(Dim::Known(1))
                        } else {
                            it.next().copied()
                        }
                    })
                    .collect::<Option<Vec<Dim>>>()
                    .ok_or_else(|| anyhow!("bad Unsqueeze axes"))?
            } else {
                let axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, x.len())).collect::<Result<_>>()?;
                let mut out = Vec::new();
                for (i, &d) in x.iter().enumerate() {
                    let drop = if axes.is_empty() {
                        d == Dim::Known(1)
                    } else {
                        axes.contains(&i)
                    };
                    if drop && d != Dim::Known(1) {
                        bail!("cannot squeeze axis {i} of {}", shape_str(&x));
                    }
                    if !drop {
                        out.push(d);
                    }
                }
                out
            };
            if out.first() != Some(&Dim::Batch) {
                bail!(
                    "{} {} -> {} moves the batch axis; not supported",
                    n.onnx_type,
                    shape_str(&x),
                    shape_str(&out)
                );
            }
            // From here on it is a reshape.
            *op = IrOp::Reshape { allow_zero: false };
            out
        }
        IrOp::Shape { .. } | IrOp::Gather { .. } | IrOp::Cast => bail!(
            "{} on a runtime tensor is not supported (only shape arithmetic that folds to constants)",
            n.onnx_type
        ),
    };
    let mut shapes = vec![out];
    // Secondary outputs (unused; checked at import) get the main shape.
    while shapes.len() < n.outputs.len() {
        shapes.push(shapes[0].clone());
    }
    Ok(shapes)
}
