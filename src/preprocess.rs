//! Turning what a person sends (an image file, named scalar features) into the flat f32
//! inputs a model takes, as the model's metadata prescribes. Shared by `qp-engine predict`
//! and `qp-engine serve`.

use std::collections::BTreeMap;
use std::io::Cursor;

use image::imageops::FilterType;
use image::{ImageReader, Rgb, Rgb32FImage};

use crate::format::meta::{Feature, ImagePreprocess};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PreprocessError {
    #[error("image could not be decoded: {0}")]
    ImageDecode(String),
    #[error("image is {width}x{height} ({pixels} pixels), over the limit of {max_pixels} pixels")]
    ImageTooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max_pixels: u64,
    },
    #[error("the model's image preprocessing is invalid: {0}")]
    BadSpec(String),
    #[error("unknown feature(s): {}; expected: {}", .unknown.join(", "), .expected.join(", "))]
    UnknownFeatures {
        unknown: Vec<String>,
        expected: Vec<String>,
    },
    #[error("missing required feature(s): {}", .0.join(", "))]
    MissingFeatures(Vec<String>),
    #[error("feature `{name}` is {value}, which is not a finite number")]
    NonFinite { name: String, value: f64 },
    #[error("feature `{name}` = {value} is outside its range [{min}, {max}]")]
    OutOfRange {
        name: String,
        value: f64,
        min: f32,
        max: f32,
    },
}

impl PreprocessError {
    /// A stable, machine-readable code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            PreprocessError::ImageDecode(_) => "invalid_image",
            PreprocessError::ImageTooLarge { .. } => "image_too_large",
            PreprocessError::BadSpec(_) => "invalid_model",
            PreprocessError::UnknownFeatures { .. } => "unknown_field",
            PreprocessError::MissingFeatures(_) => "missing_field",
            PreprocessError::NonFinite { .. } => "non_finite",
            PreprocessError::OutOfRange { .. } => "out_of_range",
        }
    }

    /// True when the caller's input is at fault (as opposed to the model file).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, PreprocessError::BadSpec(_))
    }
}

/// Decodes a PNG or JPEG, flattens any alpha over white, resizes to `spec` with a
/// triangle (bilinear) filter, scales RGB to [0,1], applies `(x - mean) / std` per channel
/// and returns the CHW-ordered values (`3 * spec.height * spec.width` of them).
///
/// `max_pixels` bounds the decoded size: the header is read first, so an image that
/// claims to be huge is refused before any pixel memory is allocated.
pub fn image_to_tensor(bytes: &[u8], spec: &ImagePreprocess, max_pixels: u64) -> Result<Vec<f32>, PreprocessError> {
    if spec.height == 0 || spec.width == 0 {
        return Err(PreprocessError::BadSpec(format!(
            "target size {}x{}",
            spec.width, spec.height
        )));
    }
    if spec.std.iter().any(|s| !s.is_finite() || *s == 0.0) || spec.mean.iter().any(|m| !m.is_finite()) {
        return Err(PreprocessError::BadSpec(format!(
            "mean {:?} / std {:?}",
            spec.mean, spec.std
        )));
    }
    let target_w = u32::try_from(spec.width).map_err(|_| PreprocessError::BadSpec("width".into()))?;
    let target_h = u32::try_from(spec.height).map_err(|_| PreprocessError::BadSpec("height".into()))?;

    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| PreprocessError::ImageDecode(e.to_string()))
    };
    let probe = reader()?;
    if probe.format().is_none() {
        return Err(PreprocessError::ImageDecode("not a PNG or JPEG file".to_string()));
    }
    let (width, height) = probe
        .into_dimensions()
        .map_err(|e| PreprocessError::ImageDecode(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(PreprocessError::ImageTooLarge {
            width,
            height,
            pixels,
            max_pixels,
        });
    }
    if pixels == 0 {
        return Err(PreprocessError::ImageDecode("image has no pixels".into()));
    }
    let mut decoder = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // RGBA16 is the widest layout PNG/JPEG decode to; leave room for the decoder's own buffers.
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_mul(2).max(1 << 20));
    decoder.limits(limits);
    let decoded = decoder
        .decode()
        .map_err(|e| PreprocessError::ImageDecode(e.to_string()))?;

    let rgba = decoded.to_rgba32f();
    let mut rgb = Rgb32FImage::new(width, height);
    for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = src.0;
        let a = a.clamp(0.0, 1.0);
        // Alpha over a white background.
        *dst = Rgb([r * a + (1.0 - a), g * a + (1.0 - a), b * a + (1.0 - a)]);
    }
    let resized = if (width, height) == (target_w, target_h) {
        rgb
    } else {
        image::imageops::resize(&rgb, target_w, target_h, FilterType::Triangle)
    };

    let plane = spec.height * spec.width;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px.0[c] - spec.mean[c]) / spec.std[c];
        }
    }
    Ok(out)
}

/// Maps named feature values onto the model's feature order: unknown names and missing
/// required features are refused, optional ones take their default, every value must be
/// finite and inside `[min, max]`, and features marked `normalize` become
/// `(v - min) / (max - min)`.
pub fn features_to_vec(values: &BTreeMap<String, f64>, features: &[Feature]) -> Result<Vec<f32>, PreprocessError> {
    let unknown: Vec<String> = values
        .keys()
        .filter(|k| !features.iter().any(|f| &f.name == *k))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(PreprocessError::UnknownFeatures {
            unknown,
            expected: features.iter().map(|f| f.name.clone()).collect(),
        });
    }
    select_features(values, features)
}

/// [`features_to_vec`] without the unknown-name check: names in `values` that are not among
/// `features` are ignored, for callers that split one request over several inputs and have
/// checked the names against all of them.
pub fn select_features(values: &BTreeMap<String, f64>, features: &[Feature]) -> Result<Vec<f32>, PreprocessError> {
    let missing: Vec<String> = features
        .iter()
        .filter(|f| f.default.is_none() && !values.contains_key(&f.name))
        .map(|f| f.name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(PreprocessError::MissingFeatures(missing));
    }
    features
        .iter()
        .map(|f| {
            let value = match values.get(&f.name) {
                Some(v) => *v,
                None => f64::from(f.default.unwrap_or(0.0)),
            };
            if !value.is_finite() {
                return Err(PreprocessError::NonFinite {
                    name: f.name.clone(),
                    value,
                });
            }
            if value < f64::from(f.min) || value > f64::from(f.max) {
                return Err(PreprocessError::OutOfRange {
                    name: f.name.clone(),
                    value,
                    min: f.min,
                    max: f.max,
                });
            }
            Ok(if f.normalize {
                normalized_position(value, f) as f32
            } else {
                value as f32
            })
        })
        .collect()
}

/// Where `value` lies in the feature's range, 0 at `min` and 1 at `max` (0.5 for a
/// degenerate range).
pub fn normalized_position(value: f64, feature: &Feature) -> f64 {
    let span = f64::from(feature.max) - f64::from(feature.min);
    if span > 0.0 {
        (value - f64::from(feature.min)) / span
    } else {
        0.5
    }
}

/// The smallest distance, over all features, from a value to the nearer edge of its range,
/// in units of that range: 0 on an edge, 0.5 at the centre of every range. Features left
/// out count at their default. `None` when there are no features to measure.
pub fn feature_box_margin(values: &BTreeMap<String, f64>, features: &[Feature]) -> Option<f64> {
    features
        .iter()
        .filter_map(|f| {
            let v = values.get(&f.name).copied().or(f.default.map(f64::from))?;
            let p = normalized_position(v, f).clamp(0.0, 1.0);
            Some(p.min(1.0 - p))
        })
        .reduce(f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgba, RgbaImage};

    fn feature(name: &str, min: f32, max: f32, default: Option<f32>, normalize: bool) -> Feature {
        Feature {
            name: name.into(),
            min,
            max,
            default,
            description: String::new(),
            normalize,
        }
    }

    fn spec(h: usize, w: usize) -> ImagePreprocess {
        ImagePreprocess {
            height: h,
            width: w,
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 1.0],
        }
    }

    fn encode(img: &RgbaImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        match format {
            ImageFormat::Jpeg => image::DynamicImage::ImageRgba8(img.clone())
                .to_rgb8()
                .write_to(&mut out, format)
                .unwrap(),
            _ => img.write_to(&mut out, format).unwrap(),
        }
        out.into_inner()
    }

    #[test]
    fn png_is_normalized_in_chw_order() {
        // 2x1: a red pixel then a fully transparent (-> white) pixel.
        let mut img = RgbaImage::new(2, 1);
        img.put_pixel(0, 0, Rgba([255, 0, 0, 255]));
        img.put_pixel(1, 0, Rgba([0, 0, 0, 0]));
        let out = image_to_tensor(&encode(&img, ImageFormat::Png), &spec(1, 2), 100).unwrap();
        // channel-major: R plane, G plane, B plane
        let expected = [
            (1.0 - 0.5) / 0.5,
            (1.0 - 0.5) / 0.5, // R
            (0.0 - 0.25) / 0.25,
            (1.0 - 0.25) / 0.25, // G
            0.0,
            1.0, // B
        ];
        assert_eq!(out.len(), 6);
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn half_alpha_blends_with_white() {
        let mut img = RgbaImage::new(1, 1);
        img.put_pixel(0, 0, Rgba([0, 0, 0, 128]));
        let s = ImagePreprocess {
            height: 1,
            width: 1,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let out = image_to_tensor(&encode(&img, ImageFormat::Png), &s, 10).unwrap();
        let expected = 1.0 - 128.0 / 255.0;
        assert!(out.iter().all(|v| (v - expected).abs() < 1e-5), "{out:?}");
    }

    #[test]
    fn resize_keeps_a_uniform_image_uniform() {
        let img = RgbaImage::from_pixel(37, 19, Rgba([51, 102, 204, 255]));
        let s = ImagePreprocess {
            height: 8,
            width: 8,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let out = image_to_tensor(&encode(&img, ImageFormat::Png), &s, 10_000).unwrap();
        assert_eq!(out.len(), 3 * 64);
        for (c, want) in [0.2f32, 0.4, 0.8].into_iter().enumerate() {
            for v in &out[c * 64..(c + 1) * 64] {
                assert!((v - want).abs() < 1e-4, "channel {c}: {v} vs {want}");
            }
        }
    }

    #[test]
    fn jpeg_decodes() {
        let img = RgbaImage::from_pixel(16, 16, Rgba([200, 100, 50, 255]));
        let s = ImagePreprocess {
            height: 4,
            width: 4,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let out = image_to_tensor(&encode(&img, ImageFormat::Jpeg), &s, 1000).unwrap();
        // JPEG is lossy; the colour must still be close.
        assert!((out[0] - 200.0 / 255.0).abs() < 0.03, "{}", out[0]);
        assert!((out[32] - 50.0 / 255.0).abs() < 0.03, "{}", out[32]);
    }

    #[test]
    fn oversized_image_is_refused_before_decoding() {
        let img = RgbaImage::new(100, 100);
        let err = image_to_tensor(&encode(&img, ImageFormat::Png), &spec(2, 2), 9_999).unwrap_err();
        assert_eq!(
            err,
            PreprocessError::ImageTooLarge {
                width: 100,
                height: 100,
                pixels: 10_000,
                max_pixels: 9_999
            }
        );
        assert_eq!(err.code(), "image_too_large");
    }

    #[test]
    fn garbage_and_truncated_images_are_decode_errors() {
        let err = image_to_tensor(b"definitely not an image", &spec(2, 2), 100).unwrap_err();
        assert_eq!(err.code(), "invalid_image");
        let png = encode(&RgbaImage::new(8, 8), ImageFormat::Png);
        let err = image_to_tensor(&png[..png.len() / 2], &spec(2, 2), 100).unwrap_err();
        assert_eq!(err.code(), "invalid_image");
        let err = image_to_tensor(&[], &spec(2, 2), 100).unwrap_err();
        assert_eq!(err.code(), "invalid_image");
    }

    #[test]
    fn bad_spec_is_not_a_client_error() {
        let png = encode(&RgbaImage::new(2, 2), ImageFormat::Png);
        let mut s = spec(2, 2);
        s.std[1] = 0.0;
        let err = image_to_tensor(&png, &s, 100).unwrap_err();
        assert!(!err.is_client_error());
    }

    fn features() -> Vec<Feature> {
        vec![
            feature("a", 0.0, 10.0, None, true),
            feature("b", -1.0, 1.0, Some(0.5), false),
        ]
    }

    fn vals(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn features_are_ordered_normalized_and_defaulted() {
        let out = features_to_vec(&vals(&[("a", 2.5)]), &features()).unwrap();
        assert_eq!(out, vec![0.25, 0.5]);
        let out = features_to_vec(&vals(&[("b", -1.0), ("a", 10.0)]), &features()).unwrap();
        assert_eq!(out, vec![1.0, -1.0]);
    }

    #[test]
    fn feature_errors_name_the_problem() {
        let f = features();
        let err = features_to_vec(&vals(&[("a", 1.0), ("zz", 1.0)]), &f).unwrap_err();
        assert!(err.to_string().contains("zz"), "{err}");
        assert_eq!(err.code(), "unknown_field");

        let err = features_to_vec(&vals(&[("b", 0.0)]), &f).unwrap_err();
        assert_eq!(err, PreprocessError::MissingFeatures(vec!["a".into()]));

        let err = features_to_vec(&vals(&[("a", f64::NAN)]), &f).unwrap_err();
        assert_eq!(err.code(), "non_finite");
        let err = features_to_vec(&vals(&[("a", f64::INFINITY)]), &f).unwrap_err();
        assert_eq!(err.code(), "non_finite");

        let err = features_to_vec(&vals(&[("a", 10.5)]), &f).unwrap_err();
        assert_eq!(err.code(), "out_of_range");
        assert!(err.to_string().contains("[0, 10]"), "{err}");
        let err = features_to_vec(&vals(&[("a", 1.0), ("b", -1.01)]), &f).unwrap_err();
        assert_eq!(err.code(), "out_of_range");
    }

    #[test]
    fn box_margin_is_distance_to_nearest_edge() {
        let f = features();
        // a at 0.5 of its range (margin 0.5); b defaults to 0.5 -> position 0.75 (margin 0.25)
        let m = feature_box_margin(&vals(&[("a", 5.0)]), &f).unwrap();
        assert!((m - 0.25).abs() < 1e-9, "{m}");
        let m = feature_box_margin(&vals(&[("a", 0.0), ("b", 0.0)]), &f).unwrap();
        assert_eq!(m, 0.0);
        assert_eq!(feature_box_margin(&vals(&[]), &[]), None);
    }
}
