//! Error-compensating weight rounding (GPTQ: Frantar et al., "Accurate Post-Training
//! Quantization for Generative Pre-trained Transformers", 2022), applied per convolution.
//!
//! Rounding each weight to the nearest step of its channel's grid is optimal weight by
//! weight, but not for the layer's output: a convolution's inputs are correlated, so
//! the rounding error of one weight can be partly cancelled by nudging the weights that
//! have not been rounded yet. With `H = E[x xᵀ]` over the layer's input patches `x` on
//! calibration data, GPTQ rounds the weights of each output channel one input column at
//! a time and spreads each column's error over the remaining columns through the upper
//! Cholesky factor of `H⁻¹`, minimizing `‖(W - Q) x‖²` greedily.
//!
//! Why it exists: on the reference model, INT8 weights alone (activations f32) moved
//! the predicted SSIM by 0.034 on average with nearest rounding and by 0.011 with GPTQ
//! (held-out icons and pseudo-images, docs/PERFORMANCE.md). The weights were the
//! larger of the two INT8 errors; this makes them the smaller.
//!
//! The linear algebra (a blocked Cholesky factorization and a triangular inverse over
//! `ndarray`'s matrix product) is written here rather than taken from a crate: the
//! pure-Rust factorization crates added minutes to every release build for two small
//! routines.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, Slice};
use rayon::prelude::*;

use super::calibrate::observe_chunk;
use super::dataset::{Sample, RUN_BATCH};
use crate::engine::{Engine, EngineOptions};
use crate::format::meta::ModelMeta;
use crate::format::QpwFile;
use crate::graph::op::{Op, Window};

/// Dampening added to `H`'s diagonal, as a share of its mean diagonal: keeps `H`
/// invertible where the calibration patches do not span every input direction (the
/// 4608-wide patches of a 7x7 layer see fewer distinct patches than that) and limits
/// how far the error of one column is pushed onto the others (the paper's value).
const DAMPING: f64 = 0.01;
/// Columns rounded before the error is pushed to the rest in one matrix product.
const BLOCK: usize = 128;

/// The second moment of one convolution's input patches, accumulated in f64.
pub struct InputMoment {
    /// Patch length: `kh * kw * cin`, in the order `(y, x, ci)`.
    pub dim: usize,
    sum: Array2<f64>,
    patches: u64,
}

impl InputMoment {
    fn new(dim: usize) -> InputMoment {
        InputMoment {
            dim,
            sum: Array2::zeros((dim, dim)),
            patches: 0,
        }
    }

    /// Adds `rows` patches stored row by row in `patches`. `xᵀx` is symmetric, so only
    /// its upper triangle is formed and summed, by blocks of rows: half the multiply-adds
    /// on the wide patches of 3x3 layers (`mean` mirrors it).
    fn add(&mut self, patches: &[f32], rows: usize) {
        let n = self.dim;
        let x = ArrayView2::from_shape((rows, n), patches).expect("patch matrix shape");
        for i0 in (0..n).step_by(BLOCK) {
            let i1 = (i0 + BLOCK).min(n);
            let mut block = Array2::<f32>::zeros((i1 - i0, n - i0));
            let (left, right) = (
                x.slice_axis(Axis(1), (i0..i1).into()),
                x.slice_axis(Axis(1), (i0..).into()),
            );
            general_mat_mul(1.0, &left.t(), &right, 0.0, &mut block);
            for (r, products) in block.outer_iter().enumerate() {
                // Row i0 + r from its diagonal on: columns r.. of the block.
                let mut sums = self.sum.row_mut(i0 + r);
                let sums = sums.slice_axis_mut(Axis(0), (i0 + r..).into());
                for (s, &v) in sums.into_iter().zip(products.iter().skip(r)) {
                    *s += v as f64;
                }
            }
        }
        self.patches += rows as u64;
    }

    /// `E[x xᵀ]`.
    fn mean(&self) -> Array2<f64> {
        let count = self.patches.max(1) as f64;
        Array2::from_shape_fn((self.dim, self.dim), |(i, j)| self.sum[[i.min(j), i.max(j)]] / count)
    }
}

/// The input patches of a convolution over `images` images of its NHWC input
/// (`shape` = `[C, H, W]`), one row per output pixel, each row `(y, x, ci)` with zeros
/// where the window hangs over the padding.
fn patches(input: &[f32], images: usize, shape: &[usize], window: &Window, out_hw: [usize; 2]) -> Vec<f32> {
    let [c, h, w] = [shape[0], shape[1], shape[2]];
    let [kh, kw] = window.kernel;
    let dim = kh * kw * c;
    let mut rows = vec![0f32; images * out_hw[0] * out_hw[1] * dim];
    let mut row = rows.chunks_exact_mut(dim);
    for n in 0..images {
        for oy in 0..out_hw[0] {
            for ox in 0..out_hw[1] {
                let patch = row.next().expect("one row per output pixel");
                for ky in 0..kh {
                    let iy = (oy * window.stride[0] + ky * window.dilation[0]) as isize - window.pads[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = (ox * window.stride[1] + kx * window.dilation[1]) as isize - window.pads[1] as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let from = ((n * h + iy as usize) * w + ix as usize) * c;
                        let to = (ky * kw + kx) * c;
                        patch[to..to + c].copy_from_slice(&input[from..from + c]);
                    }
                }
            }
        }
    }
    rows
}

/// Input moments of the convolutions and dense layers `layers` (node indices of the
/// direct-convolution FP32 model `fp32`) over `samples`.
pub fn input_moments(fp32: &[u8], samples: &[Sample], layers: &[usize]) -> Result<BTreeMap<usize, InputMoment>> {
    if samples.is_empty() {
        bail!("weight rounding needs at least one calibration sample");
    }
    let file = QpwFile::from_bytes(fp32).context("loading the FP32 model for weight rounding")?;
    let meta: ModelMeta = file.meta.clone();
    let mut engine = Engine::from_file(file, EngineOptions::default())?;
    struct Layer {
        node: usize,
        input: usize,
        /// The input's `[C, H, W]` (a dense layer's `[in]` as `[in, 1, 1]`).
        shape: Vec<usize>,
        window: Window,
        out_hw: [usize; 2],
    }
    let mut wanted = BTreeMap::new();
    let mut moments = BTreeMap::new();
    for &n in layers {
        let node = &meta.nodes[n];
        let input = node.inputs[0];
        // A dense layer is a 1x1 convolution over a 1x1 map.
        let (cin, window, out_hw, shape) = match node.op {
            Op::Conv { cin, window, .. } => {
                let out = &meta.values[node.outputs[0]].shape;
                (cin, window, [out[1], out[2]], meta.values[input].shape.clone())
            }
            Op::Dense { input: cin, .. } => (
                cin,
                Window {
                    kernel: [1, 1],
                    stride: [1, 1],
                    dilation: [1, 1],
                    pads: [0; 4],
                },
                [1, 1],
                vec![cin, 1, 1],
            ),
            _ => bail!("node {:?} is neither a direct convolution nor a dense layer", node.name),
        };
        wanted.insert(
            n,
            Layer {
                node: n,
                input,
                shape,
                window,
                out_hw,
            },
        );
        moments.insert(n, InputMoment::new(window.kernel[0] * window.kernel[1] * cin));
    }
    let inputs: Vec<usize> = wanted.values().map(|c| c.input).collect();

    for chunk in samples.chunks(RUN_BATCH) {
        // The inputs of this chunk, copied out of the executor as they go by.
        let mut seen: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        observe_chunk(&mut engine, &meta, chunk, &inputs, &mut |v, data| {
            seen.insert(v, data.to_vec());
        })?;
        if let Some(c) = wanted.values().find(|c| !seen.contains_key(&c.input)) {
            bail!(
                "the input of {:?} was not observed (a u8 or reordered value?)",
                meta.nodes[c.node].name
            );
        }
        // Each layer's patches and moment update, in parallel (each owns its sum).
        moments.par_iter_mut().for_each(|(n, moment)| {
            let c = &wanted[n];
            let rows = patches(&seen[&c.input], chunk.len(), &c.shape, &c.window, c.out_hw);
            moment.add(&rows, chunk.len() * c.out_hw[0] * c.out_hw[1]);
        });
    }
    Ok(moments)
}

/// The block `rows x cols` of `a` (ndarray's `s!` expands to code `forbid(unsafe_code)`
/// rejects, so the axes are sliced one at a time).
fn view(a: &Array2<f64>, rows: impl Into<Slice>, cols: impl Into<Slice>) -> ArrayView2<'_, f64> {
    let mut v = a.view();
    v.slice_axis_inplace(Axis(0), rows.into());
    v.slice_axis_inplace(Axis(1), cols.into());
    v
}

fn view_mut(a: &mut Array2<f64>, rows: impl Into<Slice>, cols: impl Into<Slice>) -> ArrayViewMut2<'_, f64> {
    let mut v = a.view_mut();
    v.slice_axis_inplace(Axis(0), rows.into());
    v.slice_axis_inplace(Axis(1), cols.into());
    v
}

/// Lower Cholesky factor of the symmetric positive definite `a`, in place (the upper
/// triangle is left as scratch). Blocked: the trailing update is one matrix product.
fn cholesky_lower(a: &mut Array2<f64>) -> Result<()> {
    let n = a.nrows();
    for k0 in (0..n).step_by(BLOCK) {
        let k1 = (k0 + BLOCK).min(n);
        for j in k0..k1 {
            let mut d = a[[j, j]];
            for p in k0..j {
                d -= a[[j, p]] * a[[j, p]];
            }
            if d.is_nan() || d <= 0.0 {
                bail!("the input moment is not positive definite (pivot {j}: {d:e})");
            }
            let d = d.sqrt();
            a[[j, j]] = d;
            // Column j below the diagonal, across the whole panel height.
            for i in j + 1..n {
                let mut v = a[[i, j]];
                for p in k0..j {
                    v -= a[[i, p]] * a[[j, p]];
                }
                a[[i, j]] = v / d;
            }
        }
        if k1 < n {
            let panel = view(a, k1.., k0..k1).to_owned();
            let mut trailing = view_mut(a, k1.., k1..);
            general_mat_mul(-1.0, &panel, &panel.t(), 1.0, &mut trailing);
        }
    }
    Ok(())
}

/// The inverse of the lower-triangular `l` (only its lower triangle is read).
fn invert_lower(l: &Array2<f64>) -> Array2<f64> {
    let n = l.nrows();
    let mut x = Array2::<f64>::zeros((n, n));
    for i0 in (0..n).step_by(BLOCK) {
        let i1 = (i0 + BLOCK).min(n);
        // rhs = -L[I, ..i0] X[..i0, ..i0], then solve L[I, I] X[I, ..i1] = [rhs | identity].
        let mut rhs = Array2::<f64>::zeros((i1 - i0, i1));
        if i0 > 0 {
            let mut left = view_mut(&mut rhs, .., ..i0);
            general_mat_mul(-1.0, &view(l, i0..i1, ..i0), &view(&x, ..i0, ..i0), 0.0, &mut left);
        }
        for r in 0..i1 - i0 {
            rhs[[r, i0 + r]] = 1.0;
        }
        // Row by row, each an update by the rows above it in the block: contiguous rows of
        // `x` (row p is zero beyond column p), where a column-wise walk missed the cache on
        // every step of the 4608-wide moments.
        for r in 0..i1 - i0 {
            let i = i0 + r;
            let mut row = rhs.row(r).slice_axis(Axis(0), (..=i).into()).to_owned();
            for p in i0..i {
                let f = l[[i, p]];
                let above = x.row(p);
                row.slice_axis_mut(Axis(0), (..=p).into())
                    .zip_mut_with(&above.slice_axis(Axis(0), (..=p).into()), |v, &a| *v -= f * a);
            }
            let d = l[[i, i]];
            x.row_mut(i)
                .slice_axis_mut(Axis(0), (..=i).into())
                .zip_mut_with(&row, |out, &v| *out = v / d);
        }
    }
    x
}

/// Upper `U` with `H⁻¹ = Uᵀ U`: the lower Cholesky factor `L` of `H` with its index
/// order reversed gives `U = P L⁻¹ P` (P the reversal), so no explicit `H⁻¹` is formed.
/// Consumes `h`: the reversal is done in place (on a standard-layout square matrix,
/// reversing the flat buffer maps `[i, j]` to `[n-1-i, n-1-j]`).
fn inverse_cholesky_upper(mut h: Array2<f64>) -> Result<Array2<f64>> {
    reverse_indices(&mut h);
    cholesky_lower(&mut h)?;
    let mut u = invert_lower(&h);
    drop(h);
    // `invert_lower` writes only the lower triangle: reversed, it is upper.
    reverse_indices(&mut u);
    Ok(u)
}

/// `a[[i, j]]` moved to `[n-1-i, n-1-j]`, in place.
fn reverse_indices(a: &mut Array2<f64>) {
    if !a.is_standard_layout() {
        *a = a.as_standard_layout().into_owned();
    }
    a.as_slice_mut().expect("standard layout").reverse();
}

/// Rounds `weights` (`rows` output channels x `moment.dim` columns, row-major, columns in
/// patch order) to integers in `[-qmax, qmax]` on the per-row steps `step`, GPTQ style,
/// the columns rounded in descending order of input energy.
pub fn round(weights: &[f32], rows: usize, step: &[f32], qmax: f32, moment: &InputMoment) -> Result<Vec<i8>> {
    let qmax = qmax as f64;
    let snapped = compensate(weights, rows, moment, ColumnOrder::ByEnergy, |r, v| {
        let s = step[r] as f64;
        (v / s).round().clamp(-qmax, qmax) * s
    })?;
    let cols = moment.dim;
    // `k * step / step` is `k` to within far less than half a step.
    Ok((0..rows * cols)
        .map(|k| (snapped[k] / step[k / cols] as f64).round() as i8)
        .collect())
}

/// Rounds `weights` (as for [`round`]) to IEEE half values, GPTQ style: the f16 grid is
/// relative rather than per-channel, but the error feedback is the same.
pub fn round_to_f16(weights: &[f32], rows: usize, moment: &InputMoment) -> Result<Vec<f32>> {
    let max = half::f16::MAX.to_f64();
    let snapped = compensate(weights, rows, moment, ColumnOrder::Natural, |_, v| {
        half::f16::from_f64(v.clamp(-max, max)).to_f64()
    })?;
    Ok(snapped.into_iter().map(|v| v as f32).collect())
}

/// The order the GPTQ sweep rounds a layer's columns in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ColumnOrder {
    /// Patch order, for f16: energy order moved its largest deltas up (held-out
    /// pseudo-images' max |delta ssim| 0.00076 -> 0.00094 against the 1e-3 bar).
    Natural,
    /// Descending input energy `E[x_i²]` (the paper's "act order"): the columns that move
    /// the output most are rounded first, while every other column can still absorb their
    /// error. On the reference model it took the 12-bit default's mean |delta ssim| on
    /// held-out pseudo-images from 0.0104 to 0.0098, and on icons from 0.0048 to 0.0047.
    ByEnergy,
}

/// `h` with its rows and columns in `order`; consumes it, so the two are not both held
/// (170 MB each for a 4608-wide patch).
fn in_order(h: Array2<f64>, order: &[usize]) -> Array2<f64> {
    if order.iter().enumerate().all(|(i, &o)| i == o) {
        return h;
    }
    Array2::from_shape_fn(h.raw_dim(), |(i, j)| h[[order[i], order[j]]])
}

/// The GPTQ sweep over a grid given by `snap(row, v)`, the grid value of row `row`
/// nearest to `v`; returns the chosen grid values, rows x columns.
fn compensate(
    weights: &[f32],
    rows: usize,
    moment: &InputMoment,
    column_order: ColumnOrder,
    snap: impl Fn(usize, f64) -> f64,
) -> Result<Vec<f64>> {
    let cols = moment.dim;
    assert_eq!(weights.len(), rows * cols, "weights are rows x patch length");
    let mut h = moment.mean();
    let mean_diag = (0..cols).map(|i| h[[i, i]]).sum::<f64>() / cols as f64;
    if mean_diag.is_nan() || mean_diag <= 0.0 || !mean_diag.is_finite() {
        // No signal at all: nothing to compensate against.
        return Ok((0..rows * cols).map(|k| snap(k / cols, weights[k] as f64)).collect());
    }
    for i in 0..cols {
        // An input never seen nonzero: round its weights alone (its row of U becomes
        // diagonal), rather than let them absorb other columns' errors.
        if h[[i, i]] == 0.0 {
            h.row_mut(i).fill(0.0);
            h.column_mut(i).fill(0.0);
            h[[i, i]] = mean_diag;
        }
        h[[i, i]] += DAMPING * mean_diag;
    }
    let mut order: Vec<usize> = (0..cols).collect();
    if column_order == ColumnOrder::ByEnergy {
        order.sort_by(|&a, &b| h[[b, b]].total_cmp(&h[[a, a]]).then(a.cmp(&b)));
    }
    let u = inverse_cholesky_upper(in_order(h, &order))?;

    // Columns as rows, in rounding order: column order[i] of W is row i of `w`.
    let mut w = Array2::from_shape_fn((cols, rows), |(i, r)| weights[r * cols + order[i]] as f64);
    let mut q = vec![0f64; rows * cols];
    for b0 in (0..cols).step_by(BLOCK) {
        let b1 = (b0 + BLOCK).min(cols);
        let mut err = Array2::<f64>::zeros((b1 - b0, rows));
        for i in b0..b1 {
            let d = u[[i, i]];
            for r in 0..rows {
                let v = w[[i, r]];
                let g = snap(r, v);
                q[r * cols + order[i]] = g;
                err[[i - b0, r]] = (v - g) / d;
            }
            for j in i + 1..b1 {
                let f = u[[i, j]];
                if f != 0.0 {
                    for r in 0..rows {
                        w[[j, r]] -= f * err[[i - b0, r]];
                    }
                }
            }
        }
        if b1 < cols {
            let mut rest = view_mut(&mut w, b1.., ..);
            general_mat_mul(-1.0, &view(&u, b0..b1, b1..).t(), &err, 1.0, &mut rest);
        }
    }
    Ok(q)
}

/// Nearest rounding on the same grid.
pub fn nearest(weights: &[f32], rows: usize, cols: usize, step: &[f32], qmax: f32) -> Vec<i8> {
    (0..rows * cols)
        .map(|k| (weights[k] / step[k / cols]).round().clamp(-qmax, qmax) as i8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spd(n: usize, seed: u64) -> Array2<f64> {
        let mut rng = crate::bench::inputs::SplitMix64::new(seed);
        let x = Array2::from_shape_fn((n + 3, n), |_| rng.uniform() - 0.5);
        let mut h = x.t().dot(&x);
        for i in 0..n {
            h[[i, i]] += 0.1;
        }
        h
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// `Uᵀ U H = I` across block boundaries.
        #[test]
        fn the_inverse_factor_inverts(n in 1usize..300, seed in 0u64..1000) {
            let h = spd(n, seed);
            let u = inverse_cholesky_upper(h.clone()).unwrap();
            let prod = u.t().dot(&u).dot(&h);
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 1.0 } else { 0.0 };
                    prop_assert!((prod[[i, j]] - want).abs() < 1e-7, "n {n}: [{i},{j}] = {}", prod[[i, j]]);
                }
                for j in 0..i {
                    prop_assert_eq!(u[[i, j]], 0.0);
                }
            }
        }
    }

    /// `sum_r (w_r - q_r)ᵀ H (w_r - q_r)` over the rows: the output error of weights `q`.
    fn output_error(w: &[f32], q: &[f32], rows: usize, h: &Array2<f64>) -> f64 {
        let cols = h.nrows();
        let mut total = 0.0;
        for r in 0..rows {
            let d: Vec<f64> = (0..cols).map(|c| (w[r * cols + c] - q[r * cols + c]) as f64).collect();
            for i in 0..cols {
                for j in 0..cols {
                    total += d[i] * h[[i, j]] * d[j];
                }
            }
        }
        total
    }

    /// The moment built from upper-triangle blocks, over several `add` calls, is the
    /// plain `Σ x xᵀ / n`, symmetric, for widths below, at and across the block size.
    #[test]
    fn the_moment_is_the_mean_outer_product() {
        let mut rng = crate::bench::inputs::SplitMix64::new(3);
        for dim in [1, 5, BLOCK, BLOCK + 1, 2 * BLOCK + 37] {
            let mut moment = InputMoment::new(dim);
            let mut all = Vec::new();
            for rows in [3, 1, 17] {
                let xs: Vec<f32> = (0..rows * dim).map(|_| rng.uniform() as f32 - 0.5).collect();
                moment.add(&xs, rows);
                all.extend(xs);
            }
            let n = all.len() / dim;
            let h = moment.mean();
            for i in 0..dim {
                for j in 0..dim {
                    let want = (0..n)
                        .map(|p| all[p * dim + i] as f64 * all[p * dim + j] as f64)
                        .sum::<f64>()
                        / n as f64;
                    assert!(
                        (h[[i, j]] - want).abs() < 1e-6,
                        "dim {dim} ({i}, {j}): {} vs {want}",
                        h[[i, j]]
                    );
                }
            }
        }
    }

    const ROWS: usize = 8;
    const COLS: usize = 150;

    /// A layer's weights (ROWS x COLS) and the moment of inputs with a strong shared
    /// component, like neighbouring pixels of an image: column `c` is
    /// `gain(c) * (common + noise * u)`, `u` uniform in [-0.5, 0.5).
    fn layer_of(seed: u64, noise: f32, gain: impl Fn(usize) -> f32) -> (InputMoment, Vec<f32>) {
        let mut rng = crate::bench::inputs::SplitMix64::new(seed);
        let mut moment = InputMoment::new(COLS);
        let mut xs = Vec::new();
        for _ in 0..400 {
            let common = (rng.uniform() * 2.0) as f32;
            for c in 0..COLS {
                xs.push(gain(c) * (common + noise * (rng.uniform() as f32 - 0.5)));
            }
        }
        moment.add(&xs, 400);
        let w = (0..ROWS * COLS).map(|_| rng.uniform() as f32 - 0.5).collect();
        (moment, w)
    }

    fn correlated_layer(seed: u64) -> (InputMoment, Vec<f32>) {
        layer_of(seed, 0.3, |_| 1.0)
    }

    /// On correlated inputs the compensated rounding leaves a smaller output error than
    /// nearest rounding, on the same grid.
    #[test]
    fn compensated_rounding_beats_nearest_on_correlated_inputs() {
        let (moment, w) = correlated_layer(7);
        // A coarse grid, so rounding errors are large.
        let step: Vec<f32> = vec![0.05; ROWS];
        let h = moment.mean();
        let dequantized = |q: &[i8]| -> Vec<f32> { q.iter().map(|&k| k as f32 * step[0]).collect() };
        let gptq = dequantized(&round(&w, ROWS, &step, 127.0, &moment).unwrap());
        let plain = dequantized(&nearest(&w, ROWS, COLS, &step, 127.0));
        let (e_gptq, e_plain) = (output_error(&w, &gptq, ROWS, &h), output_error(&w, &plain, ROWS, &h));
        assert!(e_gptq < 0.5 * e_plain, "gptq {e_gptq:e} vs nearest {e_plain:e}");
        // Every weight stays within one step or so of its value.
        for (&g, &v) in gptq.iter().zip(&w) {
            assert!((v - g).abs() < 4.0 * step[0]);
        }
    }

    /// Inputs whose energy grows tenfold across the columns, correlated like pixels.
    fn graded_layer(seed: u64) -> (InputMoment, Vec<f32>) {
        layer_of(seed, 0.5, |c| 0.3 + 3.0 * c as f32 / COLS as f32)
    }

    /// Rounding the high-energy columns first (as INT8 `round` does) leaves a smaller
    /// output error than patch order, where they come last with nothing left to absorb
    /// their error.
    #[test]
    fn rounding_by_energy_beats_patch_order() {
        let step = 0.05f32;
        for seed in [1, 2, 3] {
            let (moment, w) = graded_layer(seed);
            let h = moment.mean();
            let int8: Vec<f32> = round(&w, ROWS, &[step; ROWS], 127.0, &moment)
                .unwrap()
                .into_iter()
                .map(|k| k as f32 * step)
                .collect();
            let snap = |_: usize, v: f64| (v / step as f64).round().clamp(-127.0, 127.0) * step as f64;
            let patch_order: Vec<f32> = compensate(&w, ROWS, &moment, ColumnOrder::Natural, snap)
                .unwrap()
                .into_iter()
                .map(|v| v as f32)
                .collect();
            let by_energy = output_error(&w, &int8, ROWS, &h);
            let natural = output_error(&w, &patch_order, ROWS, &h);
            assert!(
                by_energy < 0.8 * natural,
                "seed {seed}: by energy {by_energy:e} vs patch order {natural:e}"
            );
        }
    }

    /// With uncorrelated inputs there is nothing to compensate: any order gives nearest
    /// rounding, each weight back in its own place.
    #[test]
    fn uncorrelated_inputs_round_to_nearest_in_any_order() {
        let mut rng = crate::bench::inputs::SplitMix64::new(5);
        let mut moment = InputMoment::new(COLS);
        // One input active per patch, with a gain per column: a diagonal moment whose
        // energies are out of patch order.
        let mut xs = vec![0f32; COLS * COLS];
        for c in 0..COLS {
            xs[c * COLS + c] = 1.0 + ((c * 37) % 11) as f32;
        }
        moment.add(&xs, COLS);
        let w: Vec<f32> = (0..ROWS * COLS).map(|_| rng.uniform() as f32 - 0.5).collect();
        let step = vec![0.01f32; ROWS];
        assert_eq!(
            round(&w, ROWS, &step, 127.0, &moment).unwrap(),
            nearest(&w, ROWS, COLS, &step, 127.0)
        );
    }

    /// The same on the f16 grid: every value an exact f16, a smaller output error than
    /// rounding each weight to its nearest f16.
    #[test]
    fn compensated_f16_rounding_beats_nearest_and_stays_on_the_grid() {
        let (moment, w) = correlated_layer(11);
        let h = moment.mean();
        let gptq = round_to_f16(&w, ROWS, &moment).unwrap();
        let plain: Vec<f32> = w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        for (&g, &v) in gptq.iter().zip(&w) {
            assert_eq!(half::f16::from_f32(g).to_f32(), g, "{g} is not an f16");
            // Compensation moves weights by a few f16 steps of the largest ones (2.4e-4).
            assert!((g - v).abs() <= 2e-3, "{g} strayed from {v}");
        }
        let (e_gptq, e_plain) = (output_error(&w, &gptq, ROWS, &h), output_error(&w, &plain, ROWS, &h));
        assert!(e_gptq < 0.5 * e_plain, "gptq {e_gptq:e} vs nearest {e_plain:e}");
    }

    #[test]
    fn patches_follow_the_window_with_zero_padding() {
        // 1 image, 2 channels, 3x3, values = 10 * pixel + channel; 3x3 window, pad 1.
        let mut input = Vec::new();
        for p in 0..9 {
            for c in 0..2 {
                input.push((10 * p + c) as f32);
            }
        }
        let window = Window {
            kernel: [3, 3],
            stride: [2, 2],
            dilation: [1, 1],
            pads: [1, 1, 1, 1],
        };
        let rows = patches(&input, 1, &[2, 3, 3], &window, [2, 2]);
        assert_eq!(rows.len(), 4 * 18);
        // Output (0,0): window centred on pixel 0; its top row and left column are padding.
        let first = &rows[..18];
        assert_eq!(&first[..6], &[0.0; 6]);
        assert_eq!(&first[6..8], &[0.0, 0.0]);
        assert_eq!(&first[8..12], &[0.0, 1.0, 10.0, 11.0]);
        // Output (1,1): centred on pixel 8 (2,2); bottom row and right column padding.
        let last = &rows[54..];
        assert_eq!(&last[..4], &[40.0, 41.0, 50.0, 51.0]);
        assert_eq!(&last[16..], &[0.0, 0.0]);
    }
}
