//! Percentiles and formatting.

use std::time::Duration;

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds of each duration, sorted.
pub fn sorted_ms(d: impl IntoIterator<Item = Duration>) -> Vec<f64> {
    let mut v: Vec<f64> = d.into_iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Sorts in place and returns the values.
pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// `p50 / p95 / p99` of sorted milliseconds.
pub fn pcts(sorted: &[f64]) -> String {
    format!(
        "p50 {:>8.1} ms  p95 {:>8.1} ms  p99 {:>8.1} ms",
        quantile(sorted, 0.5),
        quantile(sorted, 0.95),
        quantile(sorted, 0.99)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[7.0], 0.95), 7.0);
    }
}
