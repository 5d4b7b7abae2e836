//! ONNX input the converter cannot take must be an error whose message says what is
//! wrong, never a panic and never a silently different model. Models are built here
//! from the prost types, so the tests need no Python.

use std::path::Path;

use prost::Message;
use qp::convert::{convert_bytes, ConvertOptions};
use qp::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

enum D {
    Batch,
    Fixed(i64),
    Named(&'static str),
}

fn value_info(name: &str, dims: &[D]) -> ValueInfoProto {
    use tensor_shape_proto::dimension::Value;
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                D::Batch => Value::DimParam("N".into()),
                D::Fixed(k) => Value::DimValue(*k),
                D::Named(s) => Value::DimParam((*s).into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn floats(name: &str, dims: &[i64]) -> TensorProto {
    let n: i64 = dims.iter().product();
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        float_data: (0..n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect(),
        ..Default::default()
    }
}

fn ints(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![values.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// `x [N,3,8,8] -> Conv 3x3 pad 1 (4 channels) -> Relu -> y`, at opset 13.
fn conv_relu() -> ModelProto {
    let graph = GraphProto {
        name: Some("conv_relu".into()),
        node: vec![
            node(
                "Conv",
                "conv",
                &["x", "w", "b"],
                &["c"],
                vec![attr_ints("kernel_shape", &[3, 3]), attr_ints("pads", &[1, 1, 1, 1])],
            ),
            node("Relu", "relu", &["c"], &["y"], vec![]),
        ],
        initializer: vec![floats("w", &[4, 3, 3, 3]), floats("b", &[4])],
        input: vec![value_info("x", &[D::Batch, D::Fixed(3), D::Fixed(8), D::Fixed(8)])],
        output: vec![value_info("y", &[D::Batch, D::Fixed(4), D::Fixed(8), D::Fixed(8)])],
        ..Default::default()
    };
    model(13, graph)
}

fn model(opset: i64, graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        producer_name: Some("import_errors".into()),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

fn convert_err(bytes: &[u8], what: &str) -> String {
    match convert_bytes(bytes, "case", &ConvertOptions::default()) {
        Ok(_) => panic!("{what}: conversion succeeded"),
        Err(e) => format!("{e:#}"),
    }
}

fn model_err(m: &ModelProto, what: &str) -> String {
    convert_err(&m.encode_to_vec(), what)
}

fn assert_mentions(msg: &str, gists: &[&str], what: &str) {
    for g in gists {
        assert!(msg.contains(g), "{what}: expected {g:?} in the message {msg:?}");
    }
}

fn fixture(case: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(case)
            .join("model.onnx"),
    )
    .expect("fixture")
}

#[test]
fn the_base_model_converts() {
    let c = convert_bytes(&conv_relu().encode_to_vec(), "case", &ConvertOptions::default()).expect("valid model");
    assert_eq!(c.meta.nodes.len(), 1, "conv with the ReLU fused");
    assert_eq!(c.meta.outputs[0].shape, [4, 8, 8]);
}

#[test]
fn garbage_bytes_are_not_a_protobuf() {
    for (what, bytes) in [
        ("0xff run", vec![0xffu8; 64]),
        ("text", b"this is not an onnx model at all\n".to_vec()),
        ("a .qpw magic", b"QPWMODEL\x01\x00\x00\x00".to_vec()),
        (
            "varint overflow",
            vec![0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        ("length past the end", vec![0x3a, 0xff, 0xff, 0xff, 0x0f, 0x00]),
        ("wire type 7", vec![0x0f, 0x00]),
    ] {
        let msg = convert_err(&bytes, what);
        assert_mentions(&msg, &["not a valid ONNX protobuf"], what);
    }
}

#[test]
fn an_empty_file_is_an_error() {
    // Zero bytes decode as an empty ModelProto; the first missing piece is the opset.
    let msg = convert_err(&[], "empty");
    assert_mentions(&msg, &["opset"], "empty");
}

#[test]
fn every_prefix_of_a_model_inside_the_graph_is_an_error() {
    // A protobuf has no end marker: a cut exactly between top-level fields can decode.
    // Every cut inside the graph, though, must fail, as must every cut before it.
    for case in ["feature_model", "torch_training_style", "legacy_view"] {
        let bytes = fixture(case);
        let m = ModelProto::decode(bytes.as_slice()).expect("fixture decodes");
        let graph_end = top_level_field_end(&bytes, 7).expect("model has a graph field");
        let stride = (graph_end / 400).max(1);
        for cut in (0..graph_end).step_by(stride).chain([graph_end - 1]) {
            let msg = convert_err(&bytes[..cut], &format!("{case} cut at {cut}"));
            assert!(!msg.is_empty());
        }
        assert!(m.graph.is_some());
    }
}

/// Byte offset where top-level field `tag` of a protobuf message ends.
fn top_level_field_end(bytes: &[u8], tag: u32) -> Option<usize> {
    let mut pos = 0;
    let varint = |pos: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*pos)?;
            *pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    };
    while pos < bytes.len() {
        let key = varint(&mut pos)?;
        let len = match key & 7 {
            0 => {
                varint(&mut pos)?;
                0
            }
            1 => 8,
            2 => varint(&mut pos)? as usize,
            5 => 4,
            _ => return None,
        };
        pos += len;
        if (key >> 3) as u32 == tag {
            return Some(pos);
        }
    }
    None
}

#[test]
fn a_model_without_a_graph_is_an_error() {
    let mut m = conv_relu();
    m.graph = None;
    assert_mentions(&model_err(&m, "no graph"), &["no graph"], "no graph");
}

#[test]
fn a_model_without_an_opset_is_an_error() {
    let mut m = conv_relu();
    m.opset_import.clear();
    assert_mentions(&model_err(&m, "no opset"), &["opset"], "no opset");
    let mut m = conv_relu();
    m.opset_import[0].domain = Some("com.example".into());
    assert_mentions(
        &model_err(&m, "custom opset only"),
        &["default-domain ONNX opset"],
        "custom opset only",
    );
}

#[test]
fn unsupported_opsets_are_errors() {
    for opset in [5, 6, 23, 99, -1] {
        let mut m = conv_relu();
        m.opset_import[0].version = Some(opset);
        let msg = model_err(&m, &format!("opset {opset}"));
        assert_mentions(&msg, &[&format!("opset {opset} is not supported"), "7 to 22"], "opset");
    }
}

#[test]
fn every_unsupported_op_is_named_in_one_message() {
    let mut m = conv_relu();
    let g = m.graph.as_mut().unwrap();
    g.node
        .insert(1, node("Resize", "upsample_1", &["c", "", "scales"], &["r"], vec![]));
    g.node.insert(2, node("Softmax", "softmax_1", &["r"], &["s"], vec![]));
    let mut custom = node("FancyConv", "custom_1", &["s"], &["t"], vec![]);
    custom.domain = Some("com.example".into());
    g.node.insert(3, custom);
    // A default-domain op name in a foreign domain is not the ONNX op.
    let mut foreign_relu = node("Relu", "foreign_relu", &["t"], &["u"], vec![]);
    foreign_relu.domain = Some("com.microsoft".into());
    g.node.insert(4, foreign_relu);
    g.node.last_mut().unwrap().input = vec!["u".into()];
    g.initializer.push(floats("scales", &[4]));
    let msg = model_err(&m, "unsupported ops");
    assert_mentions(
        &msg,
        &[
            "unsupported ONNX ops at opset 13",
            "Resize",
            "upsample_1",
            "Softmax",
            "softmax_1",
            "FancyConv (domain com.example)",
            "custom_1",
            "foreign_relu",
        ],
        "unsupported ops",
    );
    assert_eq!(msg.matches("in node").count(), 4, "{msg}");
}

#[test]
fn the_unsupported_fixture_names_its_ops_and_nodes() {
    let case: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unsupported/case.json")).unwrap(),
    )
    .unwrap();
    let msg = convert_err(&fixture("unsupported"), "unsupported fixture");
    for key in ["expect_error", "nodes"] {
        for name in case[key].as_array().expect(key) {
            assert_mentions(&msg, &[name.as_str().unwrap()], "unsupported fixture");
        }
    }
    assert_mentions(&msg, &["opset"], "unsupported fixture");
}

#[test]
fn grouped_convolution_is_an_error() {
    let mut m = conv_relu();
    let g = m.graph.as_mut().unwrap();
    g.node[0].attribute.push(attr_int("group", 3));
    g.initializer[0] = floats("w", &[3, 1, 3, 3]);
    g.initializer[1] = floats("b", &[3]);
    let msg = model_err(&m, "group conv");
    assert_mentions(&msg, &["group=3", "conv"], "group conv");
}

#[test]
fn a_conv_with_one_dimensional_weights_is_an_error() {
    let mut m = conv_relu();
    let g = m.graph.as_mut().unwrap();
    g.initializer[0] = floats("w", &[108]);
    g.node[0].attribute.retain(|a| a.name() != "kernel_shape");
    let msg = model_err(&m, "1-D weights");
    assert_mentions(
        &msg,
        &["Conv weight has shape [108]", "only 2-D convolution"],
        "1-D weights",
    );
}

#[test]
fn conv_weights_that_do_not_fit_the_input_are_an_error() {
    let mut m = conv_relu();
    m.graph.as_mut().unwrap().initializer[0] = floats("w", &[4, 5, 3, 3]);
    assert_mentions(&model_err(&m, "cin"), &["5 input channels", "the input has 3"], "cin");
    let mut m = conv_relu();
    m.graph.as_mut().unwrap().initializer[1] = floats("b", &[5]);
    assert_mentions(
        &model_err(&m, "bias"),
        &["bias has 5 values for 4 output channels"],
        "bias",
    );
    let mut m = conv_relu();
    m.graph.as_mut().unwrap().node[0].attribute[0] = attr_ints("kernel_shape", &[3, 3, 3]);
    assert_mentions(
        &model_err(&m, "3-D kernel"),
        &["kernel_shape has 3 entries"],
        "3-D kernel",
    );
    let mut m = conv_relu();
    m.graph.as_mut().unwrap().node[0]
        .attribute
        .push(attr_ints("strides", &[0, 1]));
    assert_mentions(
        &model_err(&m, "zero stride"),
        &["strides and dilations must be positive"],
        "zero stride",
    );
}

#[test]
fn a_reshape_that_merges_the_batch_is_an_error() {
    for (what, target) in [("flatten everything", vec![-1]), ("batch into channels", vec![-1, 64])] {
        let mut m = conv_relu();
        let g = m.graph.as_mut().unwrap();
        g.node.push(node("Reshape", "merge", &["y", "target"], &["z"], vec![]));
        g.initializer.push(ints("target", &target));
        g.output = vec![value_info("z", &[D::Named("M")])];
        let msg = model_err(&m, what);
        assert_mentions(&msg, &["merge", "merges the batch"], what);
    }
    let mut m = conv_relu();
    let g = m.graph.as_mut().unwrap();
    g.node.push(node("Reshape", "moves", &["y", "target"], &["z"], vec![]));
    g.initializer.push(ints("target", &[4, -1, 64]));
    g.output = vec![value_info("z", &[D::Fixed(4), D::Batch, D::Fixed(64)])];
    assert_mentions(&model_err(&m, "batch moved"), &["moves", "batch axis"], "batch moved");
}

#[test]
fn a_dynamic_non_batch_dimension_is_an_error() {
    let mut m = conv_relu();
    m.graph.as_mut().unwrap().input[0] = value_info("x", &[D::Batch, D::Fixed(3), D::Named("height"), D::Fixed(8)]);
    let msg = model_err(&m, "symbolic height");
    assert_mentions(
        &msg,
        &[
            "graph input \"x\"",
            "axis 2 is symbolic",
            "height",
            "only the batch axis",
        ],
        "symbolic",
    );

    let mut m = conv_relu();
    m.graph.as_mut().unwrap().input[0] = value_info("x", &[D::Batch, D::Fixed(3), D::Fixed(8), D::Fixed(-1)]);
    assert_mentions(
        &model_err(&m, "unknown width"),
        &["axis 3 has no fixed size"],
        "unknown width",
    );

    let mut m = conv_relu();
    let x = &mut m.graph.as_mut().unwrap().input[0];
    if let Some(type_proto::Value::TensorType(t)) = x.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.shape = None;
    }
    assert_mentions(&model_err(&m, "no shape"), &["has no shape"], "no shape");
}

#[test]
fn a_non_float_input_is_an_error() {
    let mut m = conv_relu();
    let x = &mut m.graph.as_mut().unwrap().input[0];
    if let Some(type_proto::Value::TensorType(t)) = x.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.elem_type = Some(DataType::Uint8 as i32);
    }
    assert_mentions(&model_err(&m, "uint8 input"), &["only float32 inputs"], "uint8 input");
}

#[test]
fn external_tensor_data_is_an_error() {
    let mut m = conv_relu();
    let w = &mut m.graph.as_mut().unwrap().initializer[0];
    w.float_data.clear();
    w.data_location = Some(DataLocation::External as i32);
    w.external_data = vec![StringStringEntryProto {
        key: Some("location".into()),
        value: Some("weights.bin".into()),
    }];
    let msg = model_err(&m, "external data");
    assert_mentions(
        &msg,
        &["initializer \"w\"", "external tensor data is not supported"],
        "external data",
    );
}

#[test]
fn initializers_whose_data_disagrees_with_their_dims_are_errors() {
    let mut m = conv_relu();
    m.graph.as_mut().unwrap().initializer[0].float_data.pop();
    assert_mentions(
        &model_err(&m, "short float_data"),
        &["initializer \"w\"", "holds 107 values"],
        "short",
    );

    let mut m = conv_relu();
    let w = &mut m.graph.as_mut().unwrap().initializer[0];
    w.float_data.clear();
    w.raw_data = Some(vec![0; 13]);
    assert_mentions(&model_err(&m, "odd raw_data"), &["raw_data is 13 bytes"], "raw");

    let mut m = conv_relu();
    m.graph.as_mut().unwrap().initializer[0].dims = vec![i64::MAX, 4, 3, 3];
    assert_mentions(&model_err(&m, "overflowing dims"), &["overflow"], "overflow");

    let mut m = conv_relu();
    m.graph.as_mut().unwrap().initializer[0].dims = vec![4, -3, 3, 3];
    assert_mentions(&model_err(&m, "negative dim"), &["negative dimension -3"], "negative");

    let mut m = conv_relu();
    m.graph.as_mut().unwrap().initializer[0].data_type = Some(DataType::String as i32);
    assert_mentions(
        &model_err(&m, "string weights"),
        &["data type", "not supported"],
        "string",
    );
}

#[test]
fn a_node_reading_an_undefined_value_is_an_error() {
    let mut m = conv_relu();
    m.graph.as_mut().unwrap().node[1].input = vec!["nowhere".into()];
    let msg = model_err(&m, "undefined value");
    assert_mentions(
        &msg,
        &["relu", "\"nowhere\"", "no initializer, input or earlier node produces"],
        "undefined",
    );

    // Out of topological order: the reader comes before the writer.
    let mut m = conv_relu();
    m.graph.as_mut().unwrap().node.reverse();
    assert_mentions(&model_err(&m, "unsorted"), &["topologically sorted"], "unsorted");
}

#[test]
fn graph_output_and_value_errors() {
    let mut m = conv_relu();
    m.graph.as_mut().unwrap().output[0] = value_info("nothing", &[D::Batch]);
    assert_mentions(
        &model_err(&m, "dangling output"),
        &["\"nothing\"", "produced by nothing"],
        "output",
    );

    let mut m = conv_relu();
    m.graph.as_mut().unwrap().output.clear();
    assert_mentions(&model_err(&m, "no outputs"), &["no outputs"], "no outputs");

    let mut m = conv_relu();
    m.graph.as_mut().unwrap().node[1].output = vec!["c".into()];
    assert_mentions(&model_err(&m, "written twice"), &["\"c\" is produced twice"], "twice");

    let mut m = conv_relu();
    m.graph.as_mut().unwrap().input.clear();
    assert_mentions(&model_err(&m, "no inputs"), &["\"x\""], "no inputs");
}

#[test]
fn bad_attributes_are_errors() {
    let mut m = conv_relu();
    m.graph.as_mut().unwrap().node[0]
        .attribute
        .push(attr_ints("pads", &[1, -1, 1, 1]));
    m.graph.as_mut().unwrap().node[0].attribute.remove(1);
    assert_mentions(
        &model_err(&m, "negative pad"),
        &["conv", "pads", "non-negative"],
        "pads",
    );

    let mut m = conv_relu();
    let mut auto_pad = attr_int("auto_pad", 0);
    auto_pad.i = None;
    auto_pad.s = Some(b"SIDEWAYS".to_vec());
    m.graph.as_mut().unwrap().node[0].attribute.push(auto_pad);
    assert_mentions(&model_err(&m, "auto_pad"), &["auto_pad \"SIDEWAYS\""], "auto_pad");

    let mut m = conv_relu();
    let mut group = attr_int("group", 0);
    group.i = None;
    group.f = Some(1.0);
    m.graph.as_mut().unwrap().node[0].attribute.push(group);
    assert_mentions(&model_err(&m, "float group"), &["group is not an int"], "group");
}

#[test]
fn a_dilated_max_pool_window_that_skips_the_input_is_an_error() {
    // A 1-row input, pads 1 above and below, kernel 2 with dilation 2: the only window taps
    // rows -1 and 1, both outside row 0, so max pooling would have no value to take.
    let graph = GraphProto {
        name: Some("dilated_pool".into()),
        node: vec![node(
            "MaxPool",
            "pool",
            &["x"],
            &["y"],
            vec![
                attr_ints("kernel_shape", &[2, 1]),
                attr_ints("dilations", &[2, 1]),
                attr_ints("pads", &[1, 0, 1, 0]),
            ],
        )],
        input: vec![value_info("x", &[D::Batch, D::Fixed(3), D::Fixed(1), D::Fixed(4)])],
        output: vec![value_info("y", &[D::Batch, D::Fixed(3), D::Fixed(1), D::Fixed(4)])],
        ..Default::default()
    };
    let msg = model_err(&model(13, graph), "dilated pool");
    assert_mentions(&msg, &["pool", "padding"], "dilated pool");
}

#[test]
fn non_finite_weights_are_errors() {
    // A NaN weight ahead of a ReLU does not show at run time (max(NaN, 0) is 0): the
    // prediction would just be wrong. Every non-finite parameter is refused, by name.
    for (index, value, shown) in [
        (0, f32::NAN, "NaN"),
        (1, f32::INFINITY, "inf"),
        (0, f32::NEG_INFINITY, "-inf"),
    ] {
        let mut m = conv_relu();
        m.graph.as_mut().unwrap().initializer[index].float_data[2] = value;
        let msg = model_err(&m, shown);
        let tensor = ["\"w\"", "\"b\""][index];
        assert_mentions(
            &msg,
            &["node \"conv\"", tensor, &format!("({shown})"), "non-finite"],
            shown,
        );
    }
}

#[test]
fn a_batch_norm_variance_without_a_square_root_is_an_error() {
    // -1e-5 plus the default epsilon (1e-5) is 0. A NaN variance is refused as a
    // non-finite parameter (above).
    let bn_params = ["gamma", "beta", "mean", "var"];
    for var in [-1.0f32, -1e-5] {
        let mut m = conv_relu();
        let g = m.graph.as_mut().unwrap();
        g.node[0].output = vec!["c0".into()];
        let mut inputs = vec!["c0"];
        inputs.extend(bn_params);
        g.node
            .insert(1, node("BatchNormalization", "bn", &inputs, &["c"], vec![]));
        for p in bn_params {
            let mut t = floats(p, &[4]);
            t.float_data = vec![1.0; 4];
            if p == "var" {
                t.float_data[3] = var;
            }
            g.initializer.push(t);
        }
        let msg = model_err(&m, "bn variance");
        assert_mentions(
            &msg,
            &["BatchNormalization node \"bn\"", "channel 3", "must be positive"],
            "bn variance",
        );
    }
}
