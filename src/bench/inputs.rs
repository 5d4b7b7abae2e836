//! Random model inputs shaped from the file's metadata, drawn the way real inputs are
//! distributed after preprocessing: normalized images are roughly N(0, 1), features are
//! uniform over their valid range (over [0, 1] when the front end normalizes them).

use crate::engine::Tensor;
use crate::format::meta::{IoSpec, ModelMeta};

/// SplitMix64: a small, fast, seedable generator; statistical quality is ample for test data.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln stays finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// One tensor per model input, in the model's input order, for `batch` samples.
pub fn random_inputs(meta: &ModelMeta, batch: usize, seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = SplitMix64::new(seed);
    meta.inputs
        .iter()
        .map(|spec| {
            let mut shape = vec![batch];
            shape.extend_from_slice(&spec.shape);
            let data = sample(spec, batch, &mut rng);
            (spec.name.clone(), Tensor::new(shape, data))
        })
        .collect()
}

fn sample(spec: &IoSpec, batch: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let per_sample: usize = spec.shape.iter().product();
    match &spec.features {
        // A feature vector: column i follows feature i's range.
        Some(features) if !features.is_empty() && per_sample == features.len() => (0..batch * per_sample)
            .map(|k| {
                let f = &features[k % per_sample];
                let (lo, hi) = if f.normalize {
                    (0.0, 1.0)
                } else {
                    (f.min as f64, f.max as f64)
                };
                (lo + (hi - lo) * rng.uniform()) as f32
            })
            .collect(),
        // Images (normalized per channel) and raw tensors.
        _ => (0..batch * per_sample).map(|_| rng.normal() as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::meta::{DType, Feature};

    fn spec(name: &str, shape: Vec<usize>, features: Option<Vec<Feature>>) -> IoSpec {
        IoSpec {
            name: name.into(),
            value: 0,
            dtype: DType::F32,
            shape,
            features,
            image: None,
        }
    }

    fn feature(min: f32, max: f32, normalize: bool) -> Feature {
        Feature {
            name: "f".into(),
            min,
            max,
            default: None,
            description: String::new(),
            normalize,
        }
    }

    #[test]
    fn features_stay_inside_their_ranges() {
        let s = spec(
            "p",
            vec![2],
            Some(vec![feature(10.0, 20.0, false), feature(-5.0, 100.0, true)]),
        );
        let mut rng = SplitMix64::new(3);
        let data = sample(&s, 500, &mut rng);
        assert_eq!(data.len(), 1000);
        for pair in data.chunks(2) {
            assert!((10.0..20.0).contains(&pair[0]), "{}", pair[0]);
            assert!((0.0..1.0).contains(&pair[1]), "{}", pair[1]);
        }
    }

    #[test]
    fn images_are_roughly_standard_normal() {
        let s = spec("image", vec![3, 16, 16], None);
        let mut rng = SplitMix64::new(1);
        let data = sample(&s, 8, &mut rng);
        let n = data.len() as f64;
        let mean = data.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.06, "mean {mean}");
        assert!((var - 1.0).abs() < 0.1, "variance {var}");
    }

    #[test]
    fn same_seed_same_inputs() {
        let s = spec("x", vec![4], None);
        let a = sample(&s, 3, &mut SplitMix64::new(9));
        let b = sample(&s, 3, &mut SplitMix64::new(9));
        let c = sample(&s, 3, &mut SplitMix64::new(10));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
