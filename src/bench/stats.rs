//! Summary statistics of repeated timings.

/// Median of `samples` (mean of the two middle values for an even count); 0 when empty.
pub fn median(samples: &[f64]) -> f64 {
    let sorted = sorted(samples);
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `q`-quantile (0 < q <= 1) by the nearest-rank method: the smallest sample such that at
/// least `q` of all samples are at or below it; 0 when empty.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let sorted = sorted(samples);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn p90_is_nearest_rank() {
        let samples: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(quantile(&samples, 0.9), 9.0);
        assert_eq!(quantile(&samples, 1.0), 10.0);
        assert_eq!(quantile(&[5.0, 7.0], 0.9), 7.0);
        assert_eq!(quantile(&[5.0], 0.9), 5.0);
    }
}
