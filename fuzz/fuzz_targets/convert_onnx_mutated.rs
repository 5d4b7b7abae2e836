//! Structure-aware ONNX fuzzing: decode a fixture, apply edits read from the fuzz input
//! (op types, attributes, dims, wiring, opset, initializer data), re-encode and convert.
//! Reaches the importer and the graph passes with models that are almost valid, which
//! raw-byte mutation of a protobuf rarely produces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use qp::onnx::proto::{AttributeProto, ModelProto};

const FIXTURES: &[&[u8]] = &[
    include_bytes!("../../tests/fixtures/feature_model/model.onnx"),
    include_bytes!("../../tests/fixtures/torch_training_style/model.onnx"),
    include_bytes!("../../tests/fixtures/legacy_view/model.onnx"),
    include_bytes!("../../tests/fixtures/multi_io/model.onnx"),
    include_bytes!("../../tests/fixtures/pool_variants/model.onnx"),
    include_bytes!("../../tests/fixtures/basic_block/model.onnx"),
    include_bytes!("../../tests/fixtures/matmul_add/model.onnx"),
];

const OPS: &[&str] = qp::onnx::import::SUPPORTED_OPS;

const ATTRS: &[&str] = &[
    "kernel_shape",
    "strides",
    "pads",
    "dilations",
    "group",
    "axis",
    "axes",
    "ceil_mode",
    "count_include_pad",
    "allowzero",
    "transA",
    "transB",
    "alpha",
    "beta",
    "epsilon",
    "start",
    "end",
    "auto_pad",
    "storage_order",
];

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn index(&mut self, len: usize) -> Option<usize> {
        (len > 0).then_some(())?;
        Some(self.byte()? as usize % len)
    }
    /// Small signed values dominate, with the extremes reachable.
    fn int(&mut self) -> Option<i64> {
        Some(match self.byte()? {
            250 => i64::MAX,
            251 => i64::MIN,
            252 => 1 << 32,
            253 => -1,
            b => b as i64 - 16,
        })
    }
}

fn edit(m: &mut ModelProto, input: &mut Input<'_>) -> Option<()> {
    let g = m.graph.as_mut()?;
    match input.byte()? % 12 {
        0 => {
            let n = input.index(g.node.len())?;
            g.node[n].op_type = Some(OPS[input.index(OPS.len())?].to_string());
        }
        1 => {
            let n = input.index(g.node.len())?;
            let node = &mut g.node[n];
            let a = input.index(node.attribute.len())?;
            let attr = &mut node.attribute[a];
            if attr.i.is_some() || attr.ints.is_empty() {
                attr.i = Some(input.int()?);
            } else {
                let k = input.index(attr.ints.len())?;
                attr.ints[k] = input.int()?;
            }
        }
        2 => {
            let t = input.index(g.initializer.len())?;
            let init = &mut g.initializer[t];
            match input.index(init.dims.len() + 1)? {
                k if k < init.dims.len() => init.dims[k] = input.int()?,
                _ => init.dims.push(input.int()?),
            }
        }
        3 => {
            let mut names: Vec<String> = g.node.iter().flat_map(|n| n.output.clone()).collect();
            names.extend(g.initializer.iter().map(|t| t.name().to_string()));
            names.extend(g.input.iter().map(|i| i.name().to_string()));
            let n = input.index(g.node.len())?;
            let k = input.index(g.node[n].input.len())?;
            g.node[n].input[k] = names.get(input.index(names.len())?)?.clone();
        }
        4 => {
            let n = input.index(g.node.len())?;
            g.node.remove(n);
        }
        5 => {
            let n = input.index(g.node.len())?;
            let (from, to) = (n, input.index(g.node.len())?);
            g.node.swap(from, to);
        }
        6 => {
            use qp::onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
            let i = input.index(g.input.len())?;
            if let Some(type_proto::Value::TensorType(t)) = g.input[i].r#type.as_mut().and_then(|t| t.value.as_mut()) {
                let shape = t.shape.as_mut()?;
                let k = input.index(shape.dim.len())?;
                shape.dim[k].value = Some(Value::DimValue(input.int()?));
            }
        }
        7 => {
            let t = input.index(g.initializer.len())?;
            let init = &mut g.initializer[t];
            let keep = input.byte()? as usize;
            init.float_data.truncate(keep);
            init.int64_data.truncate(keep);
            if let Some(raw) = init.raw_data.as_mut() {
                raw.truncate(keep * 4);
            }
        }
        8 => {
            let o = input.index(m.opset_import.len())?;
            m.opset_import[o].version = Some(input.byte()? as i64 % 25);
        }
        9 => {
            let n = input.index(g.node.len())?;
            let name = ATTRS[input.index(ATTRS.len())?];
            let count = input.byte()? as usize % 5;
            let mut ints = Vec::new();
            for _ in 0..count {
                ints.push(input.int()?);
            }
            let i = if count == 1 { ints.pop() } else { None };
            g.node[n].attribute.retain(|a| a.name() != name);
            g.node[n].attribute.push(AttributeProto {
                name: Some(name.into()),
                i,
                ints,
                ..Default::default()
            });
        }
        10 => {
            let n = input.index(g.node.len())?;
            let node = &mut g.node[n];
            if input.byte()? % 2 == 0 {
                let k = input.index(node.input.len())?;
                node.input.remove(k);
            } else {
                let k = input.index(node.input.len() + 1)?;
                node.input.insert(k, String::new());
            }
        }
        _ => {
            let o = input.index(g.output.len())?;
            let n = input.index(g.node.len())?;
            let k = input.index(g.node[n].output.len())?;
            g.output[o].name = Some(g.node[n].output[k].clone());
        }
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(pick) = input.index(FIXTURES.len()) else {
        return;
    };
    let mut model = ModelProto::decode(FIXTURES[pick]).expect("fixtures decode");
    for _ in 0..16 {
        if edit(&mut model, &mut input).is_none() {
            break;
        }
    }
    qp_fuzz::convert_and_load(&model.encode_to_vec());
});
