//! Fully connected layer: `y[n][o] = act(sum_i x[n][i] * W[o][i] + b[o])`.
//!
//! Weights are packed `[ceil(out/16)][in][16]` (`o = block * 16 + lane`, lanes past `out`
//! zero) so one 16-output panel is a contiguous stream: for each input `i` the panel row is
//! one AVX-512 register or two AVX2 registers. Batch 1 is a GEMV bound by streaming the
//! weights once; larger batches tile several rows of `x` per loaded panel row so each weight
//! load feeds several FMAs.

use crate::cpu::Isa;
use crate::parallel::ParallelFor;
use crate::simd::{resolve, task_count};
#[cfg(target_arch = "x86_64")]
use crate::simd::{
    x86::{Avx2, Avx512},
    F32x,
};

/// Output lanes per packed panel.
pub const DENSE_LANES: usize = 16;

/// Below this many multiply-adds a dense layer runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// Length of the packed weights for an `out x input` layer.
pub fn packed_dense_len(out: usize, input: usize) -> usize {
    out.div_ceil(DENSE_LANES) * input * DENSE_LANES
}

/// Packs row-major `W[out][input]` into `[ceil(out/16)][input][16]`, zero-padding lanes.
pub fn pack_dense_weights(w_out_in: &[f32], out: usize, input: usize) -> Vec<f32> {
    assert_eq!(
        w_out_in.len(),
        out * input,
        "pack_dense_weights: {out}x{input} weights need {} elements, got {}",
        out * input,
        w_out_in.len()
    );
    let mut packed = vec![0.0f32; packed_dense_len(out, input)];
    for o in 0..out {
        let (block, lane) = (o / DENSE_LANES, o % DENSE_LANES);
        for i in 0..input {
            packed[(block * input + i) * DENSE_LANES + lane] = w_out_in[o * input + i];
        }
    }
    packed
}

#[allow(clippy::too_many_arguments)]
fn assert_dense_args(
    what: &str,
    batch: usize,
    input_len: usize,
    output_len: usize,
    x: &[f32],
    packed_w: &[f32],
    bias: &[f32],
    y: &[f32],
) {
    let padded = output_len.div_ceil(DENSE_LANES) * DENSE_LANES;
    assert!(
        x.len() == batch * input_len
            && packed_w.len() == packed_dense_len(output_len, input_len)
            && bias.len() == padded
            && y.len() == batch * output_len,
        "{what}: batch {batch}, {input_len} -> {output_len} needs x {}, packed weights {}, bias {padded} \
         and y {} elements; got {}, {}, {} and {}",
        batch * input_len,
        packed_dense_len(output_len, input_len),
        batch * output_len,
        x.len(),
        packed_w.len(),
        bias.len(),
        y.len()
    );
}

/// Scalar reference for [`dense`]: one dot product per output, straight from the packed
/// layout.
#[allow(clippy::too_many_arguments)]
pub fn dense_scalar(
    batch: usize,
    input_len: usize,
    output_len: usize,
    x: &[f32],
    packed_w: &[f32],
    bias: &[f32],
    relu: bool,
    y: &mut [f32],
) {
    assert_dense_args("dense_scalar", batch, input_len, output_len, x, packed_w, bias, y);
    for n in 0..batch {
        for o in 0..output_len {
            let (block, lane) = (o / DENSE_LANES, o % DENSE_LANES);
            let mut acc = 0.0f32;
            for i in 0..input_len {
                acc += x[n * input_len + i] * packed_w[(block * input_len + i) * DENSE_LANES + lane];
            }
            let v = acc + bias[o];
            y[n * output_len + o] = if relu { v.max(0.0) } else { v };
        }
    }
}

/// Raw output pointer shared by tasks that write disjoint output panels.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// safety: tasks derived from one `&mut [f32]` write disjoint elements through it (each
// task owns a distinct range of 16-output panels), and `ParallelFor::run` returns only
// after all tasks finished, while the `&mut` borrow is still held.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Accessor so closures capture the whole (Sync) wrapper, not its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[allow(clippy::too_many_arguments)]
pub fn dense(
    isa: Isa,
    par: &dyn ParallelFor,
    batch: usize,
    input_len: usize,
    output_len: usize,
    x: &[f32],
    packed_w: &[f32],
    bias: &[f32],
    relu: bool,
    y: &mut [f32],
) {
    assert_dense_args("dense", batch, input_len, output_len, x, packed_w, bias, y);
    if batch == 0 || output_len == 0 {
        return;
    }
    let isa = resolve(isa);
    if isa == Isa::Scalar {
        dense_scalar(batch, input_len, output_len, x, packed_w, bias, relu, y);
        return;
    }
    let blocks = output_len.div_ceil(DENSE_LANES);
    let tasks = task_count(par, blocks, batch * input_len * output_len, PARALLEL_MIN_WORK);
    let per_task = blocks.div_ceil(tasks);
    let out = OutPtr(y.as_mut_ptr());
    let run_blocks = |task: usize| {
        let b0 = task * per_task;
        let b1 = (b0 + per_task).min(blocks);
        if b0 >= b1 {
            return;
        }
        let args = DenseArgs {
            batch,
            input_len,
            output_len,
            x: x.as_ptr(),
            w: packed_w.as_ptr(),
            bias: bias.as_ptr(),
            relu,
            y: out.get(),
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            // safety: resolve() confirmed AVX-512; assert_dense_args() checked every length;
            // blocks b0..b1 are this task's alone (see OutPtr).
            Isa::Avx512 => unsafe { dense_blocks_avx512(&args, b0, b1) },
            #[cfg(target_arch = "x86_64")]
            // safety: as above, for AVX2+FMA.
            Isa::Avx2 => unsafe { dense_blocks_avx2(&args, b0, b1) },
            _ => unreachable!("the scalar tier returned above"),
        }
    };
    if tasks <= 1 {
        run_blocks(0);
    } else {
        par.run(tasks, &run_blocks);
    }
}

struct DenseArgs {
    batch: usize,
    input_len: usize,
    output_len: usize,
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    relu: bool,
    y: *mut f32,
}

/// Computes output panels `b0..b1` for every row.
///
/// # Safety
/// The ISA of `S` must be available, `NV * S::LANES == 16`, the pointers must cover the
/// lengths `assert_dense_args` checks, and no one else may access panels `b0..b1` of `y`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dense_blocks_body<S: F32x, const NV: usize, const R: usize>(a: &DenseArgs, b0: usize, b1: usize) {
    debug_assert_eq!(NV * S::LANES, DENSE_LANES);
    for block in b0..b1 {
        let w = a.w.add(block * a.input_len * DENSE_LANES);
        let o0 = block * DENSE_LANES;
        let valid = (a.output_len - o0).min(DENSE_LANES);
        let tile = Tile {
            input_len: a.input_len,
            w,
            bias: a.bias.add(o0),
            relu: a.relu,
            valid,
            y_stride: a.output_len,
        };
        let mut n = 0;
        while n + R <= a.batch {
            tile.rows::<S, NV, R>(a.x.add(n * a.input_len), a.y.add(n * a.output_len + o0));
            n += R;
        }
        let (x, y) = (a.x.add(n * a.input_len), a.y.add(n * a.output_len + o0));
        match a.batch - n {
            0 => {}
            1 => tile.gemv::<S, NV>(x, y),
            2 => tile.rows::<S, NV, 2>(x, y),
            3 => tile.rows::<S, NV, 3>(x, y),
            4 => tile.rows::<S, NV, 4>(x, y),
            5 => tile.rows::<S, NV, 5>(x, y),
            6 => tile.rows::<S, NV, 6>(x, y),
            7 => tile.rows::<S, NV, 7>(x, y),
            rest => unreachable!("row tile of {R} leaves {rest} rows"),
        }
    }
}

/// One 16-output panel.
#[cfg(target_arch = "x86_64")]
struct Tile {
    input_len: usize,
    w: *const f32,
    bias: *const f32,
    relu: bool,
    /// Outputs of this panel that exist (the rest are padding and are not stored).
    valid: usize,
    y_stride: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// `R` rows of `x` against the panel: each loaded weight vector feeds `R` FMAs.
    #[inline(always)]
    unsafe fn rows<S: F32x, const NV: usize, const R: usize>(&self, x: *const f32, y: *mut f32) {
        let mut acc = [[S::zero(); NV]; R];
        for i in 0..self.input_len {
            let wp = self.w.add(i * DENSE_LANES);
            let mut wv = [S::zero(); NV];
            for (v, w) in wv.iter_mut().enumerate() {
                *w = S::load(wp.add(v * S::LANES));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = S::splat(*x.add(r * self.input_len + i));
                for v in 0..NV {
                    acc_r[v] = S::fmadd(xv, wv[v], acc_r[v]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            self.store::<S, NV>(acc_r, y.add(r * self.y_stride));
        }
    }

    /// One row: four independent accumulator chains over `i` hide the FMA latency.
    #[inline(always)]
    unsafe fn gemv<S: F32x, const NV: usize>(&self, x: *const f32, y: *mut f32) {
        const CHAINS: usize = 4;
        let mut acc = [[S::zero(); NV]; CHAINS];
        let mut i = 0;
        while i + CHAINS <= self.input_len {
            for (u, acc_u) in acc.iter_mut().enumerate() {
                let xv = S::splat(*x.add(i + u));
                let wp = self.w.add((i + u) * DENSE_LANES);
                for (v, a) in acc_u.iter_mut().enumerate() {
                    *a = S::fmadd(xv, S::load(wp.add(v * S::LANES)), *a);
                }
            }
            i += CHAINS;
        }
        while i < self.input_len {
            let xv = S::splat(*x.add(i));
            let wp = self.w.add(i * DENSE_LANES);
            for (v, a) in acc[0].iter_mut().enumerate() {
                *a = S::fmadd(xv, S::load(wp.add(v * S::LANES)), *a);
            }
            i += 1;
        }
        let mut sum = acc[0];
        for v in 0..NV {
            sum[v] = S::add(S::add(acc[0][v], acc[1][v]), S::add(acc[2][v], acc[3][v]));
        }
        self.store::<S, NV>(&sum, y);
    }

    /// Adds the bias, applies the activation and stores the panel's valid outputs.
    #[inline(always)]
    unsafe fn store<S: F32x, const NV: usize>(&self, acc: &[S::V; NV], y: *mut f32) {
        for (v, a) in acc.iter().enumerate() {
            let lane0 = v * S::LANES;
            if lane0 >= self.valid {
                break;
            }
            let mut out = S::add(*a, S::load(self.bias.add(lane0)));
            if self.relu {
                out = S::max(out, S::zero());
            }
            let n = self.valid - lane0;
            if n >= S::LANES {
                S::store(y.add(lane0), out);
            } else {
                S::store_partial(y.add(lane0), n, out);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dense_blocks_avx2(a: &DenseArgs, b0: usize, b1: usize) {
    // 4 rows x 2 vectors = 8 accumulators + 2 weights + 1 broadcast of 16 registers.
    dense_blocks_body::<Avx2, 2, 4>(a, b0, b1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn dense_blocks_avx512(a: &DenseArgs, b0: usize, b1: usize) {
    // 8 rows x 1 vector: 8 independent FMA chains per panel row.
    dense_blocks_body::<Avx512, 1, 8>(a, b0, b1)
}
