//! Arbitrary bytes as an ONNX file: conversion must succeed or fail with an error, never
//! panic; a converted model must serialize, load and validate.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qp_fuzz::convert_and_load(data);
});
