//! Sorted scores and the ROC points at each distinct threshold, as scikit-learn's
//! `_binary_clf_curve` / `roc_curve` define them.
//!
//! Scores of each class are sorted separately (descending) and merged lazily: this keeps the
//! memory at one `f64` per score (no label next to it) and lets every metric be computed in one
//! streaming pass over the distinct thresholds, without materialising a curve of `n` points.

/// Scores split by class, each sorted from high to low. All scores are finite.
pub(crate) struct SortedScores {
    pub(crate) pos: Vec<f64>,
    pub(crate) neg: Vec<f64>,
}

impl SortedScores {
    /// Splits and sorts the scores. Callers have already checked that labels are 0/1 and that
    /// every score is finite.
    pub(crate) fn new(scores: &[f64], labels: &[u8]) -> Self {
        let n_pos = labels.iter().filter(|&&l| l == 1).count();
        let mut pos = Vec::with_capacity(n_pos);
        let mut neg = Vec::with_capacity(labels.len() - n_pos);
        for (&s, &l) in scores.iter().zip(labels) {
            // `+ 0.0` turns -0.0 into 0.0 so that the total order below groups them like `==`
            // (numpy's `diff(y_score) != 0` treats them as one threshold).
            if l == 1 { pos.push(s + 0.0) } else { neg.push(s + 0.0) }
        }
        pos.sort_unstable_by(|a, b| b.total_cmp(a));
        neg.sort_unstable_by(|a, b| b.total_cmp(a));
        Self { pos, neg }
    }

    pub(crate) fn n_pos(&self) -> u64 {
        self.pos.len() as u64
    }

    pub(crate) fn n_neg(&self) -> u64 {
        self.neg.len() as u64
    }

    /// The points at each distinct score, high to low: `(threshold, fps, tps)` where `fps`/`tps`
    /// count the negatives/positives with a score >= threshold.
    pub(crate) fn points(&self) -> DistinctPoints<'_> {
        DistinctPoints { pos: &self.pos, neg: &self.neg, i: 0, j: 0 }
    }

    /// The ROC points in the order `roc_curve` returns them, without the `(0, 0)` point it
    /// prepends: with `drop_intermediate`, an inner point is kept only when the second
    /// difference of `fps` or of `tps` (over the unpruned sequence) is nonzero.
    pub(crate) fn for_each_roc_point(&self, drop_intermediate: bool, mut f: impl FnMut(f64, u64, u64)) {
        let mut it = self.points();
        if !drop_intermediate {
            it.for_each(|(t, fp, tp)| f(t, fp, tp));
            return;
        }
        let Some(first) = it.next() else { return };
        f(first.0, first.1, first.2);
        let Some(mut mid) = it.next() else { return };
        let mut prev = first;
        for next in it {
            let keep = prev.1 + next.1 != 2 * mid.1 || prev.2 + next.2 != 2 * mid.2;
            if keep {
                f(mid.0, mid.1, mid.2);
            }
            prev = mid;
            mid = next;
        }
        // The last point is always kept (and is distinct from the first one here).
        f(mid.0, mid.1, mid.2);
    }
}

/// Iterator over the distinct thresholds of two descending-sorted score lists.
pub(crate) struct DistinctPoints<'a> {
    pos: &'a [f64],
    neg: &'a [f64],
    i: usize,
    j: usize,
}

impl Iterator for DistinctPoints<'_> {
    type Item = (f64, u64, u64);

    fn next(&mut self) -> Option<Self::Item> {
        let t = match (self.pos.get(self.i), self.neg.get(self.j)) {
            (None, None) => return None,
            (Some(&p), None) => p,
            (None, Some(&q)) => q,
            (Some(&p), Some(&q)) => p.max(q),
        };
        while self.i < self.pos.len() && self.pos[self.i] == t {
            self.i += 1;
        }
        while self.j < self.neg.len() && self.neg[self.j] == t {
            self.j += 1;
        }
        Some((t, self.j as u64, self.i as u64))
    }
}
