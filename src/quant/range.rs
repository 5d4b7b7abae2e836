//! Activation ranges from calibration: a min/max pass, then a fine histogram over that
//! range, then a clipping method that picks the quantized interval.
//!
//! Clipping trades resolution against saturation: a 256-level grid stretched over the
//! rare largest values wastes levels on them (a wider grid less so: the search weighs
//! the rounding noise of the grid's own step). `Method::Mse` picks the interval that
//! minimizes the expected squared error of quantizing the observed distribution;
//! `Method::Percentile` drops a fixed tail; `Method::MinMax` keeps everything.

use serde::{Deserialize, Serialize};

/// Histogram resolution: the clipping search moves in steps of `1 / BINS` of the range,
/// below one quantization step at full range for grids up to 12 bits.
pub const BINS: usize = 4096;

/// How a value's clipping interval is chosen from its calibration histogram.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The observed minimum and maximum.
    MinMax,
    /// Drop this fraction of the samples on each side (e.g. 1e-4 keeps 99.99%).
    Percentile(f64),
    /// Minimum expected squared quantization error (rounding inside, clipping outside).
    Mse,
}

impl Method {
    pub fn name(&self) -> String {
        match self {
            Method::MinMax => "minmax".into(),
            Method::Percentile(p) => format!("percentile({})", 100.0 * (1.0 - p)),
            Method::Mse => "mse".into(),
        }
    }

    /// Parses `minmax`, `mse` or `percentile` / `percentileNN.NN` (the share kept, in %).
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "minmax" => Some(Method::MinMax),
            "mse" => Some(Method::Mse),
            "percentile" => Some(Method::Percentile(1e-4)),
            _ => {
                let kept: f64 = s.strip_prefix("percentile")?.parse().ok()?;
                (50.0..100.0)
                    .contains(&kept)
                    .then(|| Method::Percentile((100.0 - kept) / 100.0))
            }
        }
    }
}

pub use crate::graph::op::QuantParams;

impl QuantParams {
    /// The `bits`-bit grid covering `[lo, hi]` (widened to contain 0, so zero is exact:
    /// padding and ReLU produce exact zeros).
    pub fn from_interval(lo: f32, hi: f32, bits: u8) -> QuantParams {
        let lo = lo.min(0.0);
        let hi = hi.max(0.0);
        let span = hi - lo;
        let top = QuantParams {
            scale: 1.0,
            zero: 0,
            bits,
        }
        .max() as f32;
        if span.is_nan() || span <= f32::MIN_POSITIVE * (top + 1.0) || !span.is_finite() {
            // A value that is always zero: any grid represents it exactly.
            return QuantParams {
                scale: 1.0,
                zero: 0,
                bits,
            };
        }
        let scale = span / top;
        let zero = (-lo / scale).round().clamp(0.0, top) as u16;
        QuantParams { scale, zero, bits }
    }

    /// The real interval this grid covers.
    pub fn interval(&self) -> (f32, f32) {
        (
            (0.0 - self.zero as f32) * self.scale,
            (self.max() as f32 - self.zero as f32) * self.scale,
        )
    }
}

/// Pass one: the extent of a value over the calibration set.
#[derive(Clone, Copy, Debug)]
pub struct Extent {
    pub min: f32,
    pub max: f32,
    pub non_finite: u64,
}

impl Default for Extent {
    fn default() -> Self {
        Extent {
            min: 0.0,
            max: 0.0,
            non_finite: 0,
        }
    }
}

impl Extent {
    pub fn observe(&mut self, xs: &[f32]) {
        for &x in xs {
            if x.is_finite() {
                self.min = self.min.min(x);
                self.max = self.max.max(x);
            } else {
                self.non_finite += 1;
            }
        }
    }
}

/// Pass two: counts over `[lo, hi]` (the extent, widened to contain 0) in `BINS` bins.
#[derive(Clone, Debug)]
pub struct Histogram {
    lo: f32,
    hi: f32,
    counts: Vec<u64>,
}

impl Histogram {
    pub fn new(extent: &Extent) -> Histogram {
        Histogram {
            lo: extent.min.min(0.0),
            hi: extent.max.max(0.0),
            counts: vec![0; BINS],
        }
    }

    fn width(&self) -> f64 {
        (self.hi as f64 - self.lo as f64) / BINS as f64
    }

    pub fn observe(&mut self, xs: &[f32]) {
        let w = self.width();
        if w <= 0.0 {
            self.counts[0] += xs.len() as u64;
            return;
        }
        let inv = 1.0 / w;
        for &x in xs {
            if x.is_finite() {
                let b = ((x as f64 - self.lo as f64) * inv) as usize;
                self.counts[b.min(BINS - 1)] += 1;
            }
        }
    }

    fn center(&self, bin: usize) -> f64 {
        self.lo as f64 + (bin as f64 + 0.5) * self.width()
    }

    /// The clipping interval `method` picks for a grid of `bits` bits.
    pub fn clip(&self, method: Method, bits: u8) -> (f32, f32) {
        let total: u64 = self.counts.iter().sum();
        if total == 0 || self.width() <= 0.0 {
            return (self.lo, self.hi);
        }
        match method {
            Method::MinMax => (self.lo, self.hi),
            Method::Percentile(tail) => {
                let drop = (tail * total as f64) as u64;
                let edge = |bins: &mut dyn Iterator<Item = usize>| -> usize {
                    let mut seen = 0u64;
                    for b in bins {
                        seen += self.counts[b];
                        if seen > drop {
                            return b;
                        }
                    }
                    0
                };
                let lo_bin = edge(&mut (0..BINS));
                let hi_bin = edge(&mut (0..BINS).rev());
                let w = self.width();
                let lo = (self.lo as f64 + lo_bin as f64 * w).min(0.0);
                let hi = (self.lo as f64 + (hi_bin + 1) as f64 * w).max(0.0);
                (lo as f32, hi as f32)
            }
            Method::Mse => {
                let mut best = (f64::INFINITY, 1.0);
                // Shrink both ends by the same factor: one search, and the zero point
                // stays where the distribution puts it.
                for step in 1..=400 {
                    let alpha = step as f64 / 400.0;
                    let err = self.clip_error(alpha * self.lo as f64, alpha * self.hi as f64, bits);
                    if err < best.0 {
                        best = (err, alpha);
                    }
                }
                let alpha = best.1;
                ((alpha * self.lo as f64) as f32, (alpha * self.hi as f64) as f32)
            }
        }
    }

    /// Expected squared error over the histogram of quantizing to `2^bits` levels on
    /// `[lo, hi]`: uniform rounding noise (`step² / 12`) inside, the distance to the
    /// nearest end outside.
    fn clip_error(&self, lo: f64, hi: f64, bits: u8) -> f64 {
        let step = (hi - lo) / ((1u32 << bits) - 1) as f64;
        let rounding = step * step / 12.0;
        let mut err = 0.0;
        for (b, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let c = self.center(b);
            let e = if c > hi {
                (c - hi) * (c - hi)
            } else if c < lo {
                (lo - c) * (lo - c)
            } else {
                rounding
            };
            err += n as f64 * e;
        }
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(xs: &[f32]) -> Histogram {
        let mut e = Extent::default();
        e.observe(xs);
        let mut h = Histogram::new(&e);
        h.observe(xs);
        h
    }

    #[test]
    fn grid_contains_zero_exactly() {
        let q = QuantParams::from_interval(-1.0, 3.0, 8);
        let (lo, hi) = q.interval();
        assert!(lo <= -0.99 && hi >= 2.99, "{q:?}");
        assert_eq!(q.zero, 64);
        let relu = QuantParams::from_interval(0.0, 6.0, 8);
        assert_eq!(relu.zero, 0);
        assert_eq!(QuantParams::from_interval(0.0, 0.0, 8), QuantParams::u8(1.0, 0));
        // 11 bits: 2047 steps, the zero point where -lo puts it.
        let wide = QuantParams::from_interval(-1.0, 3.0, 11);
        assert_eq!((wide.zero, wide.max(), wide.element_bytes()), (512, 2047, 2));
        assert!((wide.scale - 4.0 / 2047.0).abs() < 1e-9, "{wide:?}");
        let (lo, hi) = wide.interval();
        assert!((lo + 1.0).abs() < 2e-3 && (hi - 3.0).abs() < 2e-3, "{lo} {hi}");
    }

    #[test]
    fn minmax_keeps_everything_and_percentile_drops_outliers() {
        let mut xs: Vec<f32> = (0..100_000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        xs.push(50.0);
        let h = histogram(&xs);
        assert_eq!(h.clip(Method::MinMax, 8), (0.0, 50.0));
        let (lo, hi) = h.clip(Method::Percentile(1e-4), 8);
        assert_eq!(lo, 0.0);
        assert!((0.99..1.05).contains(&hi), "{hi}");
    }

    #[test]
    fn mse_clips_a_long_tail_but_not_a_uniform_range() {
        // Uniform: clipping only adds error, so the whole range is kept.
        let uniform: Vec<f32> = (0..50_000).map(|i| i as f32 / 50_000.0).collect();
        let (_, hi) = histogram(&uniform).clip(Method::Mse, 8);
        assert!(hi > 0.98, "{hi}");
        // Exponential tail (post-ReLU activations): the chosen interval is the best of
        // the candidates, cut short of the maximum.
        let tail: Vec<f32> = (1..200_000).map(|i| -((i as f32) / 200_000.0).ln()).collect();
        let h = histogram(&tail);
        let (_, hi) = h.clip(Method::Mse, 8);
        let max = tail.iter().cloned().fold(0.0, f32::max);
        assert!(hi < max && hi > 3.0, "hi {hi} max {max}");
        let err = h.clip_error(0.0, hi as f64, 8);
        for other in [0.25, 0.5, 0.75, 1.0] {
            assert!(
                err <= h.clip_error(0.0, other * max as f64, 8),
                "hi {hi} vs {other} * max"
            );
        }
        // A finer grid's rounding costs less, so it clips less.
        let (_, hi11) = h.clip(Method::Mse, 11);
        assert!(hi11 > hi, "11 bits {hi11} vs 8 bits {hi}");
    }

    #[test]
    fn parses_method_names() {
        assert_eq!(Method::parse("mse"), Some(Method::Mse));
        assert_eq!(Method::parse("minmax"), Some(Method::MinMax));
        assert!(matches!(Method::parse("percentile99.9"), Some(Method::Percentile(p)) if (p - 1e-3).abs() < 1e-12));
        assert_eq!(Method::parse("percentile100"), None);
        assert_eq!(Method::parse("bogus"), None);
    }
}
