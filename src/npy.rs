//! `.npy` files in and out of the CLI (float32; float64 inputs are narrowed).

use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use crate::engine::Tensor;

pub fn read(path: &Path) -> Result<Tensor> {
    let open = || std::fs::File::open(path).with_context(|| format!("opening {}", path.display()));
    let arr: ArrayD<f32> = match ArrayD::<f32>::read_npy(open()?) {
        Ok(a) => a,
        Err(first) => match ArrayD::<f64>::read_npy(open()?) {
            Ok(a) => a.mapv(|v| v as f32),
            Err(_) => bail!("{}: not a float32/float64 .npy array ({first})", path.display()),
        },
    };
    let shape = arr.shape().to_vec();
    let data = arr.as_standard_layout().iter().copied().collect();
    Ok(Tensor { shape, data })
}

pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let arr = ArrayD::from_shape_vec(IxDyn(&t.shape), t.data.clone()).context("tensor shape")?;
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    arr.write_npy(std::io::BufWriter::new(f))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
