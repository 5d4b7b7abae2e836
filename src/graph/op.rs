//! The engine's operator set: what the converter lowers ONNX to, what the `.qpw` stores
//! and what the executors run. Every activation has the batch as its leading axis; shapes
//! here are per-sample (batch axis left out).

use serde::{Deserialize, Serialize};

/// Channel block of packed conv and dense weights: output channels are grouped in
/// panels of this many lanes, padded with zeros. One panel is one AVX-512 register or
/// two AVX2 registers, so one packed layout serves both tiers.
pub const PACK_LANES: usize = 16;

/// Whether a `ConvWinograd` weight tensor of `dims` is packed as for `Conv`,
/// `[ceil(cout/16), 3, 3, cin, 16]`, for the engine to transform at load, rather than
/// transformed already.
pub fn winograd_weights_direct(dims: &[usize], cin: usize, cout: usize) -> bool {
    dims == [cout.div_ceil(PACK_LANES), 3, 3, cin, PACK_LANES]
}

/// 2-D window geometry shared by convolution and pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// top, left, bottom, right
    pub pads: [usize; 4],
}

impl Window {
    /// Whether Winograd F(2x2, 3x3) computes this window: 3x3, stride 1, dilation 1.
    pub fn is_winograd_3x3(&self) -> bool {
        self.kernel == [3, 3] && self.stride == [1, 1] && self.dilation == [1, 1]
    }

    /// Output extent of one spatial axis (`axis` 0 = H, 1 = W), floor mode.
    pub fn out_extent(&self, axis: usize, input: usize, ceil_mode: bool) -> Option<usize> {
        let pad = self.pads[axis] + self.pads[axis + 2];
        let span = self.dilation[axis] * (self.kernel[axis] - 1) + 1;
        let padded = input + pad;
        if padded < span || self.stride[axis] == 0 {
            return None;
        }
        let num = padded - span;
        let q = if ceil_mode {
            num.div_ceil(self.stride[axis])
        } else {
            num / self.stride[axis]
        };
        Some(q + 1)
    }
}

/// Epilogue applied after a conv or dense accumulation, in this order:
/// `y = act(acc + bias + residual)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    None,
    Relu,
}

/// The grid of a quantized value (INT8 regions): `real = (q - zero) * scale`, `q` in
/// `[0, 2^bits - 1]`. An 8-bit value is stored as u8, a wider one (9 to 15 bits) as
/// i16.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    pub scale: f32,
    pub zero: u16,
    /// Absent in files written before wider grids existed: 8.
    #[serde(default = "QuantParams::u8_bits", skip_serializing_if = "QuantParams::is_u8_bits")]
    pub bits: u8,
}

impl QuantParams {
    pub const U8_BITS: u8 = 8;
    /// The widest grid an i16 holds.
    pub const MAX_BITS: u8 = 15;

    fn u8_bits() -> u8 {
        Self::U8_BITS
    }

    fn is_u8_bits(bits: &u8) -> bool {
        *bits == Self::U8_BITS
    }

    /// A u8 grid.
    pub fn u8(scale: f32, zero: u8) -> QuantParams {
        QuantParams {
            scale,
            zero: zero as u16,
            bits: Self::U8_BITS,
        }
    }

    /// The largest grid point, `2^bits - 1`.
    pub fn max(&self) -> u16 {
        ((1u32 << self.bits.min(16)) - 1) as u16
    }

    /// Whether the value is stored as i16 rather than u8.
    pub fn is_wide(&self) -> bool {
        self.bits > Self::U8_BITS
    }

    /// Bytes per stored element.
    pub fn element_bytes(&self) -> usize {
        if self.is_wide() {
            2
        } else {
            1
        }
    }

    /// What a valid file may hold: a finite positive scale, 8 to 15 bits, the zero point
    /// on the grid.
    pub fn check(&self) -> Result<(), String> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(format!("scale {} is not finite and positive", self.scale));
        }
        if !(Self::U8_BITS..=Self::MAX_BITS).contains(&self.bits) {
            return Err(format!(
                "{} bits (a grid has {} to {})",
                self.bits,
                Self::U8_BITS,
                Self::MAX_BITS
            ));
        }
        if self.zero > self.max() {
            return Err(format!("zero point {} is off the grid [0, {}]", self.zero, self.max()));
        }
        Ok(())
    }
}

/// One engine operator. Parameters (weights, biases) are tensor ids into the file's
/// tensor table, listed in `Node::params` in the order documented on each variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// NCHW convolution, group 1. Inputs: `[x]` or `[x, residual]` (residual added
    /// before the activation). Params: `[weight, bias]`; weight packed
    /// `[ceil(cout/16)][kh][kw][cin][16]` f32, bias `[ceil(cout/16)*16]`.
    Conv {
        cin: usize,
        cout: usize,
        window: Window,
        activation: Activation,
    },
    /// A 3x3, stride-1, dilation-1 convolution computed by Winograd F(2x2, 3x3): as
    /// `Conv`, but the weight is the transformed `U = G g Gᵀ`, packed
    /// `[ceil(cout/16)][16][cin][16]` f32 (see `qp_kernels::conv::pack_winograd_weights`),
    /// or (f16 files) packed as for `Conv`, f16 or f32, and transformed at load
    /// (`winograd_weights_direct`).
    ConvWinograd {
        cin: usize,
        cout: usize,
        window: Window,
        activation: Activation,
    },
    /// INT8 convolution, group 1: u8 input (its grid on the input value), s8 weights
    /// per output channel, i32 accumulation, epilogue in f32. Inputs `[x]` or
    /// `[x, residual]`; the residual and the output are u8 or f32 as their values say
    /// (an output is u8 when every reader is INT8). Params: `[weight, bias, scale]`:
    /// weight i8 packed `[ceil(cout/16)][kh][kw][ceil(cin/4)][16][4]`; bias i32
    /// `[ceil(cout/16)*16]` with the input zero point folded in; scale f32, same length,
    /// `input scale * weight scale` per channel (see `qp_kernels::qconv`).
    QConv {
        cin: usize,
        cout: usize,
        window: Window,
        activation: Activation,
    },
    /// f32 -> u8 on the output value's grid: where an FP32 value feeds an INT8 layer.
    /// (The other boundary needs no op: an INT8 layer read by FP32 ones writes f32.)
    Quantize,
    /// `y = act(x · Wᵀ + b)` over the last axis. Input `[in]` per sample. Params:
    /// `[weight, bias]`; weight packed `[ceil(out/16)][in][16]`, bias padded likewise.
    Dense {
        input: usize,
        output: usize,
        activation: Activation,
    },
    MaxPool {
        window: Window,
        ceil_mode: bool,
    },
    AveragePool {
        window: Window,
        ceil_mode: bool,
        count_include_pad: bool,
    },
    GlobalAveragePool,
    /// Elementwise sum of two activations of the same shape.
    Add {
        activation: Activation,
    },
    Relu,
    Sigmoid,
    /// Reinterprets the per-sample shape; the data order (row-major NCHW) is unchanged.
    Reshape,
    /// Concatenation along a per-sample axis (0 = the first axis after the batch).
    Concat {
        axis: usize,
    },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "conv",
            Op::ConvWinograd { .. } => "conv_winograd",
            Op::QConv { .. } => "qconv",
            Op::Quantize => "quantize",
            Op::Dense { .. } => "dense",
            Op::MaxPool { .. } => "max_pool",
            Op::AveragePool { .. } => "average_pool",
            Op::GlobalAveragePool => "global_average_pool",
            Op::Add { .. } => "add",
            Op::Relu => "relu",
            Op::Sigmoid => "sigmoid",
            Op::Reshape => "reshape",
            Op::Concat { .. } => "concat",
        }
    }
}

// The packed layouts belong to the kernels; the op set only names their lane count.
const _: () = assert!(
    PACK_LANES == qp_kernels::conv::PANEL
        && PACK_LANES == qp_kernels::dense::DENSE_LANES
        && PACK_LANES == qp_kernels::qconv::PANEL
);
/// Input channels per packed INT8 weight group (`vpdpbusd` multiplies 4 bytes a lane).
pub const QPACK_GROUP: usize = qp_kernels::qconv::GROUP;
