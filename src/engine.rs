//! The engine's public face: load a `.qpw`, run batches. Used by the CLI, the bench and
//! the server.

use std::collections::HashMap;
use std::path::Path;

use crate::exec::params::Params;
use crate::exec::pool::PinnedPool;
use crate::format::{ModelMeta, QpwFile};
use crate::graph::op::Op;
use crate::plan::{validate::validate, Plan};
pub use qp_kernels::cpu::Isa;

/// A dense f32 tensor; `shape` includes the leading batch axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }
}

#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Cap on the kernel tier (also `QP_MAX_ISA`).
    pub max_isa: Option<Isa>,
    /// Worker threads (also `QP_THREADS`); default: one per core available.
    pub threads: Option<usize>,
    /// Run the plain scalar reference executor instead of the optimized one.
    pub reference: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    /// The file is well-formed but describes something this engine cannot run.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// The caller's inputs are wrong (names, shapes, batch, non-finite values).
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("{0}")]
    Config(String),
}

/// Model outputs by name, in the model's order.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Largest batch one `run` accepts; bigger requests are split by the caller.
pub const MAX_BATCH: usize = 4096;

pub struct Engine {
    file: QpwFile,
    isa: Isa,
    threads: usize,
    reference: bool,
    pool: Option<PinnedPool>,
    weights: Params,
    plans: HashMap<usize, Plan>,
    arena: crate::exec::arena::Arena,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.file.meta.name)
            .field("isa", &self.isa)
            .field("threads", &self.threads)
            .finish()
    }
}

impl Engine {
    pub fn load(path: &Path, options: EngineOptions) -> Result<Engine, EngineError> {
        Self::from_file(QpwFile::open(path)?, options)
    }

    /// Builds an engine over an already validated file image.
    pub fn from_file(file: QpwFile, options: EngineOptions) -> Result<Engine, EngineError> {
        validate(&file.meta).map_err(EngineError::InvalidModel)?;
        let isa = qp_kernels::cpu::select_isa(options.max_isa).map_err(EngineError::Config)?;
        let threads = match options.threads {
            Some(0) => return Err(EngineError::Config("threads must be at least 1".into())),
            Some(t) => t,
            None => match std::env::var("QP_THREADS") {
                Ok(s) if !s.trim().is_empty() => s
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&t| t > 0)
                    .ok_or_else(|| EngineError::Config(format!("QP_THREADS={s:?} is not a positive number")))?,
                _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
        };
        let int8 = file
            .meta
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::QConv { .. } | Op::Quantize));
        if options.reference && int8 {
            return Err(EngineError::Config(
                "the reference executor runs f32 and f16 models; INT8 models run on the kernels \
                 (QP_MAX_ISA=scalar for the portable integer path)"
                    .into(),
            ));
        }
        if int8 {
            qp_kernels::qconv::env_int8_cap().map_err(EngineError::Config)?;
            warn_if_int8_gains_nothing();
        }
        let pool = if options.reference {
            None
        } else {
            Some(PinnedPool::new(threads).map_err(EngineError::Config)?)
        };
        let weights = Params::new(&file);
        Ok(Engine {
            weights,
            file,
            isa,
            threads,
            reference: options.reference,
            pool,
            plans: HashMap::new(),
            arena: Default::default(),
        })
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.file.meta
    }

    pub fn file(&self) -> &QpwFile {
        &self.file
    }

    /// Heap bytes held by parameters widened or transformed at load (f16 files); 0 for f32 files, whose
    /// weights are read in place from the mapping.
    pub fn widened_weight_bytes(&self) -> usize {
        self.weights.heap_bytes()
    }

    /// The kernel tier in use ("reference" executor reports `Isa::Scalar`).
    pub fn isa(&self) -> Isa {
        if self.reference {
            Isa::Scalar
        } else {
            self.isa
        }
    }

    /// The INT8 convolution tier this engine runs (`qconv::select_int8_tier`), for a model
    /// with INT8 convolutions; AMX takes the layers with a multiple of 64 input channels,
    /// AVX512-VNNI the others. A model whose activations are i16 (wider grids) runs them
    /// on the tier `qconv::effective_tier_for::<i16>` gives (AVX512-VNNI for AMX).
    pub fn int8_tier(&self) -> Option<qp_kernels::qconv::Int8Tier> {
        let meta = &self.file.meta;
        let int8 = meta.nodes.iter().any(|n| matches!(n.op, Op::QConv { .. }));
        let wide = meta
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::QConv { .. }))
            .any(|n| meta.values[n.inputs[0]].quant.is_some_and(|q| q.is_wide()));
        (int8 && !self.reference).then(|| {
            let tier = qp_kernels::qconv::select_int8_tier(self.isa);
            if wide {
                qp_kernels::qconv::effective_tier_for::<i16>(tier)
            } else {
                tier
            }
        })
    }

    pub fn executor_name(&self) -> &'static str {
        if self.reference {
            "reference"
        } else {
            "simd"
        }
    }

    /// Whether the worker threads are pinned to cores.
    pub fn pinned(&self) -> bool {
        self.pool.as_ref().is_some_and(|p| p.is_pinned())
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Peak activation memory for `batch`, in bytes.
    pub fn activation_bytes(&mut self, batch: usize) -> usize {
        self.plan(batch).arena_bytes()
    }

    fn plan(&mut self, batch: usize) -> &Plan {
        if !self.plans.contains_key(&batch) && self.plans.len() >= 16 {
            self.plans.clear();
        }
        let meta = &self.file.meta;
        self.plans.entry(batch).or_insert_with(|| Plan::new(meta, batch))
    }

    /// Checks names, shapes and batch; returns the batch size. Values are checked as they
    /// are copied in (`run_inner`).
    fn check_inputs(&self, inputs: &[(&str, Tensor)]) -> Result<usize, EngineError> {
        let meta = &self.file.meta;
        let mut batch = None;
        for (name, t) in inputs {
            let Some(spec) = meta.inputs.iter().find(|i| i.name == *name) else {
                let known: Vec<&str> = meta.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(EngineError::BadInput(format!(
                    "unknown input {name:?} (the model's inputs: {known:?})"
                )));
            };
            if inputs.iter().filter(|(n, _)| n == name).count() > 1 {
                return Err(EngineError::BadInput(format!("input {name:?} given more than once")));
            }
            if t.shape.len() != spec.shape.len() + 1 || t.shape[1..] != spec.shape[..] {
                return Err(EngineError::BadInput(format!(
                    "input {name:?} has shape {:?}; expected [batch, {}]",
                    t.shape,
                    spec.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                )));
            }
            if t.data.len() != t.shape.iter().product::<usize>() {
                return Err(EngineError::BadInput(format!(
                    "input {name:?}: data length does not match its shape"
                )));
            }
            let b = t.shape[0];
            if b == 0 || b > MAX_BATCH {
                return Err(EngineError::BadInput(format!(
                    "input {name:?}: batch {b} is outside 1..={MAX_BATCH}"
                )));
            }
            if *batch.get_or_insert(b) != b {
                return Err(EngineError::BadInput(format!(
                    "inputs disagree on the batch size ({} vs {b})",
                    batch.unwrap_or(0)
                )));
            }
        }
        for spec in &meta.inputs {
            if !inputs.iter().any(|(n, _)| *n == spec.name) {
                return Err(EngineError::BadInput(format!("missing input {:?}", spec.name)));
            }
        }
        batch.ok_or_else(|| EngineError::BadInput("no inputs given".into()))
    }

    /// Runs one batch. Every model input must be given exactly once, all with the same
    /// batch size; returns every model output, in the model's order.
    pub fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, EngineError> {
        self.run_inner(inputs, None, None, None)
    }

    /// `run`, calling `observe(node index, output)` after each node with the node's
    /// output in the executor's layout (calibration reads value distributions this way).
    pub fn run_observed(
        &mut self,
        inputs: &[(&str, Tensor)],
        observe: crate::exec::fast::Observer<'_>,
    ) -> Result<NamedTensors, EngineError> {
        self.check_observable()?;
        self.run_inner(inputs, None, Some(observe), None)
    }

    /// Runs the nodes up to and including node `last` only, calling `observe` after each;
    /// for measurements that need one node's output and nothing after it.
    pub fn run_through(
        &mut self,
        inputs: &[(&str, Tensor)],
        last: usize,
        observe: crate::exec::fast::Observer<'_>,
    ) -> Result<(), EngineError> {
        self.check_observable()?;
        if last >= self.file.meta.nodes.len() {
            return Err(EngineError::Config(format!(
                "node {last} does not exist; the model has {} nodes",
                self.file.meta.nodes.len()
            )));
        }
        self.run_inner(inputs, None, Some(observe), Some(last)).map(|_| ())
    }

    /// Observers see the kernel executor's slots; the reference executor has none to show.
    fn check_observable(&self) -> Result<(), EngineError> {
        if self.reference {
            return Err(EngineError::Config(
                "observing node outputs needs the kernel executor, not the reference one".into(),
            ));
        }
        Ok(())
    }

    /// `run`, also returning each node's wall time in seconds (in `meta().nodes` order).
    pub fn run_profiled(&mut self, inputs: &[(&str, Tensor)]) -> Result<(NamedTensors, Vec<f64>), EngineError> {
        let mut times = Vec::with_capacity(self.file.meta.nodes.len());
        let out = self.run_inner(inputs, Some(&mut times), None, None)?;
        Ok((out, times))
    }

    fn run_inner(
        &mut self,
        inputs: &[(&str, Tensor)],
        timings: Option<&mut Vec<f64>>,
        observe: Option<crate::exec::fast::Observer<'_>>,
        last: Option<usize>,
    ) -> Result<Vec<(String, Tensor)>, EngineError> {
        let batch = self.check_inputs(inputs)?;
        let plan = self.plan(batch).clone();
        self.arena.reserve(plan.arena_len);
        let arena = self.arena.as_mut_slice();
        let meta = &self.file.meta;
        let isa = self.isa;
        for (name, t) in inputs {
            let spec = meta.inputs.iter().find(|i| i.name == *name).expect("checked");
            let slot = &plan.slots[spec.value];
            let dst = &mut arena[slot.offset..slot.offset + slot.len];
            let finite = match &self.pool {
                Some(_) => crate::exec::fast::load_input(isa, &spec.shape, batch, &t.data, dst),
                None => {
                    dst.copy_from_slice(&t.data);
                    t.data.iter().all(|v| v.is_finite())
                }
            };
            if !finite {
                let i = t.data.iter().position(|v| !v.is_finite()).unwrap_or(0);
                return Err(EngineError::BadInput(format!(
                    "input {name:?} holds a non-finite value ({}) at flat index {i}",
                    t.data[i]
                )));
            }
        }
        let ran = match &self.pool {
            Some(pool) => {
                let (file, weights) = (&self.file, &self.weights);
                pool.enter(|| crate::exec::fast::run(file, weights, &plan, arena, isa, pool, timings, observe, last))
            }
            None => crate::exec::run_reference(&self.file, &self.weights, &plan, arena, timings),
        };
        if let Err(overflow) = ran {
            let node = &meta.nodes[overflow.node];
            return Err(EngineError::BadInput(format!(
                "the model's arithmetic left the f32 range at node {:?} ({}) on these inputs, so it has \
                 no meaningful output for them: they are far outside the values the model works with \
                 (or its weights are)",
                node.name,
                overflow.raised.describe()
            )));
        }
        if last.is_some() {
            return Ok(Vec::new());
        }
        Ok(meta
            .outputs
            .iter()
            .map(|o| {
                let slot = &plan.slots[o.value];
                let src = &self.arena.as_slice()[slot.offset..slot.offset + slot.len];
                let mut data = vec![0f32; slot.len];
                match &self.pool {
                    Some(_) => crate::exec::fast::store_output(isa, &o.shape, batch, src, &mut data),
                    None => data.copy_from_slice(src),
                }
                let mut shape = vec![batch];
                shape.extend_from_slice(&o.shape);
                (o.name.clone(), Tensor::new(shape, data))
            })
            .collect())
    }
}

/// Warns, once per process, where this CPU's best INT8 kernels are the exact AVX2 ones
/// (no VNNI): they multiply no faster than FP32 FMA there, and the FP32 model's Winograd
/// 3x3 layers make it as fast or faster (docs/PERFORMANCE.md: Zen 1, batch 1, 2 threads,
/// INT8 135 ms against FP32 107 ms; Zen 3 about even). Not where a tier cap chose them.
/// Once, because the converter loads an engine per corrected layer (it printed the same
/// line 45 times).
fn warn_if_int8_gains_nothing() {
    use qp_kernels::qconv::{int8_tier, Int8Tier};
    static WARNED: std::sync::Once = std::sync::Once::new();
    let features = qp_kernels::cpu::features();
    if int8_tier(features.best_isa(), features) == Int8Tier::Avx2 {
        WARNED.call_once(|| {
            tracing::warn!(
                "this CPU has no VNNI: the INT8 model runs exact AVX2 integer kernels, which are no \
             faster than FP32 here; serve the FP32 file on this CPU"
            )
        });
    }
}
