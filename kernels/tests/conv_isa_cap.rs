//! A capped tier runs that tier's code, and a tier above the CPU falls back. A test binary
//! of its own: the per-tier call counters are process-wide.

mod conv_support;

use conv_support::*;
use qp_kernels::conv::{calls_per_tier, conv2d_nhwc, effective_isa, Epilogue};
use qp_kernels::cpu::{features, Isa};
use qp_kernels::parallel::Serial;

#[test]
fn each_request_runs_the_capped_tier() {
    let g = geometry(1, [6, 6], 5, 20, [3, 3], [1, 1], [1, 1], [1; 4]);
    let p = problem(g, false, Epilogue::None, 11);
    let (x, w, b) = (p.input_nhwc(), p.packed_weights(), p.padded_bias());
    let best = features().best_isa();
    for requested in Isa::ALL {
        let before = calls_per_tier();
        let mut y = vec![0.0; g.output_len()];
        conv2d_nhwc(requested, &Serial, &g, &x, &w, &b, None, Epilogue::None, &mut y);
        let after = calls_per_tier();
        let ran = requested.min(best);
        assert_eq!(effective_isa(requested), ran);
        for tier in Isa::ALL {
            let calls = after[tier as usize] - before[tier as usize];
            assert_eq!(
                calls,
                u64::from(tier == ran),
                "request {requested}: {tier} ran {calls} times"
            );
        }
    }
    if best == Isa::Avx512 {
        // The case that matters on AVX-512 machines: an AVX2 cap must not run AVX-512 code.
        assert_eq!(effective_isa(Isa::Avx2), Isa::Avx2);
    }
}
