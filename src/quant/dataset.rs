//! Sample sets for calibration and the accuracy report: real images from a directory
//! (preprocessed exactly as the model's metadata says), `.npy` arrays, and the
//! deterministic pseudo-images the reference harness uses.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::bench::inputs::SplitMix64;
use crate::engine::Tensor;
use crate::format::meta::{IoSpec, ModelMeta};

/// Decoded images larger than this are refused (a 512x512 icon is 0.26 M pixels).
const MAX_IMAGE_PIXELS: u64 = 64 << 20;

/// A named set of samples (e.g. the held-out images).
pub type NamedSet = (String, Vec<Sample>);

/// One model evaluation's inputs, one flat per-sample vector per model input, in the
/// model's input order.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Where it came from, for reports: a file path, `npy:<row>` or `pseudo:<n>`.
    pub origin: String,
    pub inputs: Vec<Vec<f32>>,
}

/// Stacks samples into one batch of named tensors.
pub fn batch<'m>(meta: &'m ModelMeta, samples: &[Sample]) -> Vec<(&'m str, Tensor)> {
    meta.inputs
        .iter()
        .enumerate()
        .map(|(k, spec)| {
            let mut shape = vec![samples.len()];
            shape.extend_from_slice(&spec.shape);
            let data = samples.iter().flat_map(|s| s.inputs[k].iter().copied()).collect();
            (spec.name.as_str(), Tensor::new(shape, data))
        })
        .collect()
}

/// The model input that takes images: the one whose metadata describes image
/// preprocessing.
fn image_input(meta: &ModelMeta) -> Option<usize> {
    meta.inputs.iter().position(|i| i.image.is_some())
}

/// Values for an input without data of its own: uniform over each feature's valid range
/// (what the front end would feed), seeded per sample so sets are reproducible.
fn sampled_input(spec: &IoSpec, seed: u64) -> Result<Vec<f32>> {
    let features = spec.features.as_ref().ok_or_else(|| {
        anyhow!(
            "input {:?} has neither calibration data (a {}.npy file) nor feature ranges to sample from",
            spec.name,
            spec.name
        )
    })?;
    let mut rng = SplitMix64::new(seed);
    Ok(features
        .iter()
        .map(|f| {
            let (lo, hi) = if f.normalize {
                (0.0, 1.0)
            } else {
                (f.min as f64, f.max as f64)
            };
            (lo + (hi - lo) * rng.uniform()) as f32
        })
        .collect())
}

/// One sample's inputs: `image` for input `k`, the others sampled from their features.
fn with_sampled_rest(meta: &ModelMeta, k: usize, image: Vec<f32>, seed: u64) -> Result<Vec<Vec<f32>>> {
    let mut image = Some(image);
    meta.inputs
        .iter()
        .enumerate()
        .map(|(j, spec)| match image.take_if(|_| j == k) {
            Some(im) => Ok(im),
            None => sampled_input(spec, seed),
        })
        .collect()
}

/// Image files under `dir` (PNG and JPEG, any depth), sorted by path.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("reading directory {}", d.display()))?;
        for e in entries {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Samples per engine run when the converter runs a model over many samples
/// (calibration, bias correction, accuracy).
pub const RUN_BATCH: usize = 8;

/// `count` of `items`, spread evenly over the whole list (icon themes list the same
/// icon at many sizes side by side; a prefix would see few distinct images).
pub fn spread<T: Clone>(items: &[T], count: usize) -> Vec<T> {
    if items.len() <= count {
        return items.to_vec();
    }
    (0..count).map(|i| items[i * items.len() / count].clone()).collect()
}

/// Samples from image files: each file fills the image input; every other input is
/// sampled from its feature ranges.
pub fn from_images(meta: &ModelMeta, files: &[PathBuf], seed: u64) -> Result<Vec<Sample>> {
    let k = image_input(meta).ok_or_else(|| {
        anyhow!("the model has no image input (no qp.image.<input> metadata); calibrate with .npy arrays")
    })?;
    let spec = meta.inputs[k].image.as_ref().expect("image input");
    files
        .iter()
        .enumerate()
        .map(|(n, path)| {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let image = crate::preprocess::image_to_tensor(&bytes, spec, MAX_IMAGE_PIXELS)
                .with_context(|| format!("preprocessing {}", path.display()))?;
            Ok(Sample {
                origin: path.display().to_string(),
                inputs: with_sampled_rest(meta, k, image, seed ^ (n as u64).wrapping_mul(0x9E37_79B9))?,
            })
        })
        .collect()
}

/// Samples from `.npy` arrays in `dir`, one file per model input named `<input>.npy`
/// with the batch as the leading axis. Inputs without a file are sampled from their
/// feature ranges.
pub fn from_npy_dir(meta: &ModelMeta, dir: &Path, seed: u64) -> Result<Vec<Sample>> {
    let mut arrays: Vec<Option<Tensor>> = Vec::new();
    let mut rows = None;
    for spec in &meta.inputs {
        let path = dir.join(format!("{}.npy", spec.name));
        if !path.exists() {
            arrays.push(None);
            continue;
        }
        let t = crate::npy::read(&path)?;
        if t.shape.len() != spec.shape.len() + 1 || t.shape[1..] != spec.shape[..] {
            bail!(
                "{}: shape {:?}, expected [N, {}]",
                path.display(),
                t.shape,
                spec.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(v) = t.data.iter().find(|v| !v.is_finite()) {
            bail!("{}: holds {v}; calibration data must be finite", path.display());
        }
        match rows {
            None => rows = Some(t.shape[0]),
            Some(r) if r != t.shape[0] => bail!("{}: {} rows, other inputs have {r}", path.display(), t.shape[0]),
            _ => {}
        }
        arrays.push(Some(t));
    }
    let rows = rows.ok_or_else(|| anyhow!("{}: no <input>.npy file for any model input", dir.display()))?;
    (0..rows)
        .map(|r| {
            let inputs = meta
                .inputs
                .iter()
                .zip(&arrays)
                .map(|(spec, a)| match a {
                    Some(t) => {
                        let n: usize = spec.shape.iter().product();
                        Ok(t.data[r * n..(r + 1) * n].to_vec())
                    }
                    None => sampled_input(spec, seed ^ (r as u64).wrapping_mul(0x9E37_79B9)),
                })
                .collect::<Result<_>>()?;
            Ok(Sample {
                origin: format!("npy:{r}"),
                inputs,
            })
        })
        .collect()
}

/// `n` deterministic pseudo-images: a blocky low-frequency pattern plus white noise,
/// normalized per image to mean 0 / std 1 and then jittered: roughly the statistics of
/// a normalized photo, varied enough that the model's output varies. Other inputs are
/// sampled from their feature ranges. Needs an input of shape `[3, H, W]`.
pub fn pseudo_images(meta: &ModelMeta, n: usize, seed: u64) -> Result<Vec<Sample>> {
    let k = image_input(meta)
        .or_else(|| meta.inputs.iter().position(|i| i.shape.len() == 3 && i.shape[0] == 3))
        .ok_or_else(|| anyhow!("the model has no [3, H, W] image input for pseudo-images"))?;
    let (h, w) = (meta.inputs[k].shape[1], meta.inputs[k].shape[2]);
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|i| {
            let cell = (h.max(w) / 14).max(1);
            let (lh, lw) = (h.div_ceil(cell), w.div_ceil(cell));
            let low: Vec<f64> = (0..3 * lh * lw).map(|_| rng.normal()).collect();
            let a = 0.2 + 0.8 * rng.uniform();
            let b = 0.2 + 0.8 * rng.uniform();
            let offset = 0.5 * rng.normal();
            let mut img: Vec<f64> = (0..3 * h * w)
                .map(|p| {
                    let (c, y, x) = (p / (h * w), (p / w) % h, p % w);
                    a * low[(c * lh + y / cell) * lw + x / cell] + b * rng.normal() + offset
                })
                .collect();
            let mean = img.iter().sum::<f64>() / img.len() as f64;
            let std = (img.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / img.len() as f64).sqrt();
            let gain = 0.7 + 0.6 * rng.uniform();
            let shift = 0.3 * rng.normal();
            for v in &mut img {
                *v = (*v - mean) / std.max(1e-12) * gain + shift;
            }
            let image: Vec<f32> = img.into_iter().map(|v| v as f32).collect();
            Ok(Sample {
                origin: format!("pseudo:{i}"),
                inputs: with_sampled_rest(
                    meta,
                    k,
                    image,
                    seed ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                )?,
            })
        })
        .collect()
}

/// Whether the `index`-th image (in `image_files` order) or `.npy` row of the calibration
/// data is held out: every fourth, never calibrated on.
pub fn is_held_out(index: usize) -> bool {
    index % 4 == 3
}

/// The files of `files` (one calibration directory's `image_files`) that `load_sets`
/// holds out: what `qp-engine bench --accuracy-held-out` measures on.
pub fn held_out_files(files: &[PathBuf]) -> Vec<PathBuf> {
    files
        .iter()
        .enumerate()
        .filter(|(i, _)| is_held_out(*i))
        .map(|(_, f)| f.clone())
        .collect()
}

/// Calibration and held-out sets from `paths` (directories of images and/or
/// `<input>.npy` files): every fourth image (or row) is held out and never calibrated
/// on; each pool is then thinned evenly to its count. `pseudo` pseudo-images join the
/// held-out sets as a set of their own.
pub fn load_sets(
    meta: &ModelMeta,
    paths: &[PathBuf],
    calibration: usize,
    holdout: usize,
    pseudo: usize,
    seed: u64,
) -> Result<(Vec<Sample>, Vec<NamedSet>)> {
    if paths.is_empty() {
        bail!("calibration needs data: --calibrate DIR (PNG/JPEG images or <input>.npy files)");
    }
    let mut images = Vec::new();
    let mut arrays = Vec::new();
    for p in paths {
        if !p.is_dir() {
            bail!("--calibrate {}: not a directory", p.display());
        }
        images.extend(image_files(p)?);
        if meta.inputs.iter().any(|i| p.join(format!("{}.npy", i.name)).exists()) {
            arrays.extend(from_npy_dir(meta, p, seed)?);
        }
    }
    if images.is_empty() && arrays.is_empty() {
        bail!(
            "no calibration data in {}: expected PNG/JPEG images or <input>.npy files",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (held_images, cal_images): (Vec<_>, Vec<_>) =
        images.into_iter().enumerate().partition(|(i, _)| is_held_out(*i));
    let (held_arrays, cal_arrays): (Vec<_>, Vec<_>) =
        arrays.into_iter().enumerate().partition(|(i, _)| is_held_out(*i));
    let strip = |v: Vec<(usize, PathBuf)>| v.into_iter().map(|(_, p)| p).collect::<Vec<_>>();
    let strip_s = |v: Vec<(usize, Sample)>| v.into_iter().map(|(_, s)| s).collect::<Vec<_>>();

    let cal_images = spread(&strip(cal_images), calibration);
    let mut cal = from_images(meta, &cal_images, seed)?;
    cal.extend(spread(&strip_s(cal_arrays), calibration.saturating_sub(cal.len())));
    let mut sets = Vec::new();
    let held_images = spread(&strip(held_images), holdout);
    if !held_images.is_empty() {
        sets.push(("images".to_string(), from_images(meta, &held_images, seed ^ 1)?));
    }
    let held_arrays = spread(&strip_s(held_arrays), holdout);
    if !held_arrays.is_empty() {
        sets.push(("arrays".to_string(), held_arrays));
    }
    if pseudo > 0 {
        sets.push(("pseudo-images".to_string(), pseudo_images(meta, pseudo, seed ^ 2)?));
    }
    if cal.is_empty() {
        bail!("no calibration samples left after holding out every fourth one; give more data");
    }
    Ok((cal, sets))
}
