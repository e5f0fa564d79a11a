//! Repetitions and their summary: median of the repetition medians, spread.

/// One timed repetition.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rep {
    /// The repetition's number: median seconds per round trip, messages per
    /// second, or bytes per second.
    pub value: f64,
    /// For round trips: the 99th percentile in seconds.
    pub p99: Option<f64>,
    /// How many round trips or messages the repetition counted.
    pub count: u64,
}

impl Rep {
    /// A latency repetition from round-trip samples in nanoseconds.
    pub fn latency(samples: &mut [u64]) -> Rep {
        samples.sort_unstable();
        Rep {
            value: percentile(samples, 0.5) * 1e-9,
            p99: Some(percentile(samples, 0.99) * 1e-9),
            count: samples.len() as u64,
        }
    }

    /// A throughput repetition: `per_second` messages or bytes per second.
    pub fn rate(per_second: f64, count: u64) -> Rep {
        Rep {
            value: per_second,
            p99: None,
            count,
        }
    }
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

/// The median of `values` (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The summary of a case's repetitions.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Median of the repetition values.
    pub median: f64,
    /// Smallest repetition value.
    pub min: f64,
    /// Largest repetition value.
    pub max: f64,
    /// Median of the repetitions' 99th percentiles (round trips only).
    pub p99: Option<f64>,
    /// Every repetition, in order.
    pub reps: Vec<Rep>,
}

impl Summary {
    /// Summarizes `reps`.
    pub fn new(reps: &[Rep]) -> Summary {
        let values: Vec<f64> = reps.iter().map(|r| r.value).collect();
        let p99s: Vec<f64> = reps.iter().filter_map(|r| r.p99).collect();
        Summary {
            median: median(&values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            p99: (!p99s.is_empty()).then(|| median(&p99s)),
            reps: reps.to_vec(),
        }
    }
}

/// The per-round ratios `a / b`: repetition `r` of `a` over repetition `r`
/// of `b` (the two ran in the same round). Empty when the counts differ.
pub fn round_ratios(a: &Summary, b: &Summary) -> Vec<f64> {
    if a.reps.len() != b.reps.len() {
        return Vec::new();
    }
    a.reps
        .iter()
        .zip(&b.reps)
        .map(|(x, y)| x.value / y.value)
        .collect()
}

/// The median of the per-round ratios `a / b`; the ratio of the medians
/// when the two did not run the same rounds.
pub fn median_ratio(a: &Summary, b: &Summary) -> f64 {
    let r = round_ratios(a, b);
    if r.is_empty() {
        a.median / b.median
    } else {
        median(&r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut s: Vec<u64> = (1..=100).rev().collect();
        let r = Rep::latency(&mut s);
        assert!((r.value - 50e-9).abs() < 1e-15);
        assert!((r.p99.unwrap() - 99e-9).abs() < 1e-15);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let sum = Summary::new(&[Rep::rate(1.0, 1), Rep::rate(3.0, 1), Rep::rate(2.0, 1)]);
        assert_eq!(
            (sum.median, sum.min, sum.max, sum.p99),
            (2.0, 1.0, 3.0, None)
        );
        // Round by round: the host was twice as fast in round 2; the
        // per-round ratios do not see it, the ratio of medians does.
        let a = Summary::new(&[Rep::rate(2.0, 1), Rep::rate(4.0, 1), Rep::rate(2.2, 1)]);
        let b = Summary::new(&[Rep::rate(1.0, 1), Rep::rate(2.0, 1), Rep::rate(1.1, 1)]);
        assert_eq!(round_ratios(&a, &b), [2.0, 2.0, 2.0]);
        assert_eq!(median_ratio(&a, &b), 2.0);
        let c = Summary::new(&[Rep::rate(1.0, 1)]);
        assert_eq!(median_ratio(&a, &c), 2.2);
    }
}
