//! Latency samples and the few statistics the report needs.

use std::time::Duration;

/// Round-trip times of one kind of call, in the order they were taken.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    times: Vec<Duration>,
    sorted: bool,
}

impl Samples {
    pub fn with_capacity(n: usize) -> Samples {
        Samples {
            times: Vec::with_capacity(n),
            sorted: false,
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.times.push(d);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.times.extend(other.times);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// The `p`-th percentile (0 < p <= 100) by nearest rank, in microseconds.
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        if self.times.is_empty() {
            return f64::NAN;
        }
        if !self.sorted {
            self.times.sort_unstable();
            self.sorted = true;
        }
        let rank = ((p / 100.0) * self.times.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.times.len()) - 1;
        self.times[index].as_secs_f64() * 1e6
    }

    pub fn p50_us(&mut self) -> f64 {
        self.percentile_us(50.0)
    }

    pub fn p99_us(&mut self) -> f64 {
        self.percentile_us(99.0)
    }
}

/// The median of a few repeated measurements (e.g. whole-run throughputs).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
