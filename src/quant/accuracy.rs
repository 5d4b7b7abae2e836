//! How far a reduced-precision model moves the outputs of its FP32 original on held-out
//! samples: per output the mean, p99 and max |delta| and Pearson r, and the cosine
//! similarity of the pooled features (the last global average pool).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::dataset::{batch, NamedSet, Sample, RUN_BATCH};
use crate::engine::{Engine, EngineOptions};
use crate::format::QpwFile;
use crate::graph::op::Op;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputAccuracy {
    pub output: String,
    /// Mean of (test - reference): the systematic part of the error.
    #[serde(default)]
    pub mean_delta: f64,
    pub mean_abs_delta: f64,
    pub p99_abs_delta: f64,
    pub max_abs_delta: f64,
    pub pearson_r: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureCosine {
    /// The node whose output was compared (a global average pool).
    pub node: String,
    pub mean: f64,
    pub min: f64,
}

/// Accuracy on one set of samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// What the samples are (e.g. `images`, `pseudo-images`, `all`).
    pub set: String,
    pub samples: usize,
    pub outputs: Vec<OutputAccuracy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooled_features: Option<FeatureCosine>,
}

/// Outputs of one model over samples: per model output all values, sample-major; plus
/// the pooled features per sample when the model has a global average pool.
pub struct Outputs {
    pub samples: usize,
    pub names: Vec<String>,
    pub values: Vec<Vec<f32>>,
    pub features: Option<(String, Vec<Vec<f32>>)>,
}

impl Outputs {
    /// The outputs of several runs as one, in order (the sets of a report, joined into
    /// its `all` row without running the models again).
    pub fn concat(parts: &[Outputs]) -> Outputs {
        let first = &parts[0];
        Outputs {
            samples: parts.iter().map(|p| p.samples).sum(),
            names: first.names.clone(),
            values: (0..first.values.len())
                .map(|k| parts.iter().flat_map(|p| p.values[k].iter().copied()).collect())
                .collect(),
            features: first.features.as_ref().map(|(node, _)| {
                let all = parts
                    .iter()
                    .flat_map(|p| p.features.iter().flat_map(|(_, f)| f.iter().cloned()))
                    .collect();
                (node.clone(), all)
            }),
        }
    }
}

/// Runs `model` (file bytes) over each set's samples.
pub fn run_sets(model: &[u8], sets: &[NamedSet]) -> Result<Vec<Outputs>> {
    sets.iter().map(|(_, samples)| run_model(model, samples)).collect()
}

/// The accuracy of `test` against `reference` (outputs of `run_sets` on `sets`) on each
/// set.
pub fn compare_each(sets: &[NamedSet], reference: &[Outputs], test: &[Outputs]) -> Vec<Accuracy> {
    sets.iter()
        .zip(reference.iter().zip(test))
        .map(|((name, _), (r, t))| compare(name, r, t))
        .collect()
}

/// `compare_each`, then over all the sets (`all`).
pub fn compare_sets(sets: &[NamedSet], reference: &[Outputs], test: &[Outputs]) -> Vec<Accuracy> {
    let mut rows = compare_each(sets, reference, test);
    if !sets.is_empty() {
        rows.push(compare("all", &Outputs::concat(reference), &Outputs::concat(test)));
    }
    rows
}

/// Runs `model` (file bytes) over `samples`.
pub fn run_model(model: &[u8], samples: &[Sample]) -> Result<Outputs> {
    let file = QpwFile::from_bytes(model).context("loading a model for the accuracy check")?;
    let meta = file.meta.clone();
    let mut engine = Engine::from_file(file, EngineOptions::default())?;
    let pool = meta.nodes.iter().rposition(|n| matches!(n.op, Op::GlobalAveragePool));
    let mut values = vec![Vec::new(); meta.outputs.len()];
    let mut features = Vec::new();
    for chunk in samples.chunks(RUN_BATCH) {
        let mut pooled: Vec<f32> = Vec::new();
        let outs = engine.run_observed(&batch(&meta, chunk), &mut |node, out| {
            if Some(node) == pool {
                pooled = out.to_vec();
            }
        })?;
        for (k, (_, t)) in outs.into_iter().enumerate() {
            values[k].extend(t.data);
        }
        if pool.is_some() {
            let per = pooled.len() / chunk.len();
            features.extend(pooled.chunks(per.max(1)).map(|c| c.to_vec()));
        }
    }
    Ok(Outputs {
        samples: samples.len(),
        names: meta.outputs.iter().map(|o| o.name.clone()).collect(),
        values,
        features: pool.map(|p| (meta.nodes[p].name.clone(), features)),
    })
}

/// Compares `test` against `reference` (both from `run_model` over the same samples).
pub fn compare(set: &str, reference: &Outputs, test: &Outputs) -> Accuracy {
    let outputs = reference
        .names
        .iter()
        .zip(&reference.values)
        .zip(&test.values)
        .map(|((name, r), t)| output_accuracy(name, r, t))
        .collect();
    let pooled_features = match (&reference.features, &test.features) {
        (Some((node, r)), Some((_, t))) if !r.is_empty() => {
            let cos: Vec<f64> = r.iter().zip(t).map(|(a, b)| cosine(a, b)).collect();
            Some(FeatureCosine {
                node: node.clone(),
                mean: cos.iter().sum::<f64>() / cos.len() as f64,
                min: cos.iter().cloned().fold(f64::INFINITY, f64::min),
            })
        }
        _ => None,
    };
    Accuracy {
        set: set.into(),
        samples: reference.samples,
        outputs,
        pooled_features,
    }
}

fn output_accuracy(name: &str, r: &[f32], t: &[f32]) -> OutputAccuracy {
    let signed: f64 = r.iter().zip(t).map(|(a, b)| *b as f64 - *a as f64).sum();
    let mut deltas: Vec<f64> = r.iter().zip(t).map(|(a, b)| (*a as f64 - *b as f64).abs()).collect();
    deltas.sort_by(f64::total_cmp);
    let n = deltas.len().max(1);
    let p99 = deltas
        .get(((n as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    OutputAccuracy {
        output: name.into(),
        mean_delta: signed / n as f64,
        mean_abs_delta: deltas.iter().sum::<f64>() / n as f64,
        p99_abs_delta: p99,
        max_abs_delta: deltas.last().copied().unwrap_or(0.0),
        pearson_r: pearson(r, t),
    }
}

/// Pearson correlation; 1 when both sides are constant and equal, 0 when only one is.
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n == 0.0 {
        return 1.0;
    }
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 && sbb == 0.0 {
        return if a == b { 1.0 } else { 0.0 };
    }
    if saa == 0.0 || sbb == 0.0 {
        return 0.0;
    }
    sab / (saa * sbb).sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 || bb == 0.0 {
        return if aa == bb { 1.0 } else { 0.0 };
    }
    ab / (aa * bb).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_known_deltas() {
        let r: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let mut t = r.clone();
        t[10] += 0.5;
        let a = output_accuracy("y", &r, &t);
        assert!((a.mean_abs_delta - 0.005).abs() < 1e-6);
        assert!((a.mean_delta - 0.005).abs() < 1e-6);
        assert!((a.max_abs_delta - 0.5).abs() < 1e-6);
        assert!(a.p99_abs_delta < 1e-6);
        assert!(a.pearson_r < 0.99 && a.pearson_r > 0.5);
        assert!((pearson(&r, &r) - 1.0).abs() < 1e-12);
        let neg: Vec<f32> = r.iter().map(|x| -x).collect();
        assert!((pearson(&r, &neg) + 1.0).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-12);
    }

    /// Outputs of `n` samples, one output of two values each, and 3-float features.
    fn outputs(n: usize, offset: f32) -> Outputs {
        Outputs {
            samples: n,
            names: vec!["y".into()],
            values: vec![(0..2 * n).map(|i| i as f32 + offset).collect()],
            features: Some(("pool".into(), (0..n).map(|i| vec![i as f32 + offset; 3]).collect())),
        }
    }

    /// The `all` row of joined sets is the comparison of the joined outputs, sample for
    /// sample in set order.
    #[test]
    fn joined_sets_compare_as_one() {
        let sets: Vec<NamedSet> = vec![("a".into(), vec![]), ("b".into(), vec![])];
        let reference = [outputs(2, 0.0), outputs(3, 10.0)];
        let test = [outputs(2, 0.5), outputs(3, 10.0)];
        let joined = Outputs::concat(&reference);
        assert_eq!(joined.samples, 5);
        assert_eq!(
            joined.values[0],
            [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
        );
        assert_eq!(joined.features.as_ref().unwrap().1.len(), 5);
        let rows = compare_sets(&sets, &reference, &test);
        let names: Vec<&str> = rows.iter().map(|r| r.set.as_str()).collect();
        assert_eq!(names, ["a", "b", "all"]);
        assert_eq!(rows[2].samples, 5);
        // Set a moved every value by 0.5 (4 of the 10), set b none.
        assert!((rows[2].outputs[0].mean_abs_delta - 0.2).abs() < 1e-6);
        assert!((rows[2].outputs[0].max_abs_delta - 0.5).abs() < 1e-6);
        assert_eq!(rows[1].outputs[0].max_abs_delta, 0.0);
    }
}
