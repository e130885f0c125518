//! Video-level scores: the mean frame score of each video.
//!
//! A video is keyed on (dataset, label, video name), not on the bare name: FF++ fakes of four
//! manipulation methods share names such as `000_003`, and DeepfakeBench's name-only key merges
//! them (and their real counterpart) into one "video".

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{MetricSet, binary_metrics};

/// One frame's score. `label` is 0 (real) or 1 (fake); `score` the probability of fake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameScore {
    pub dataset: String,
    pub label: u8,
    pub video: String,
    pub score: f64,
}

/// One video's score: the mean of its frame scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoScore {
    pub dataset: String,
    pub label: u8,
    pub video: String,
    /// Mean frame score: the frame scores summed in input order, divided by their number.
    pub score: f64,
    pub n_frames: usize,
}

/// Frame- and video-level metrics of the same frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelMetrics {
    pub frame: MetricSet,
    pub video: MetricSet,
}

/// Groups frames by (dataset, label, video) and averages their scores. The result is sorted by
/// that key. A NaN frame score makes its video's score NaN (and the metrics undefined).
pub fn video_scores(frames: &[FrameScore]) -> Vec<VideoScore> {
    // Hash while accumulating (one lookup per frame), sort only the videos afterwards.
    let mut groups: HashMap<(&str, u8, &str), (f64, usize)> = HashMap::new();
    for f in frames {
        let e = groups.entry((f.dataset.as_str(), f.label, f.video.as_str())).or_insert((0.0, 0));
        e.0 += f.score;
        e.1 += 1;
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    groups
        .into_iter()
        .map(|((dataset, label, video), (sum, n))| VideoScore {
            dataset: dataset.to_owned(),
            label,
            video: video.to_owned(),
            score: sum / n as f64,
            n_frames: n,
        })
        .collect()
}

/// Metrics of the frames and of their videos (see [`video_scores`]).
pub fn evaluate(frames: &[FrameScore]) -> LevelMetrics {
    let scores: Vec<f64> = frames.iter().map(|f| f.score).collect();
    let labels: Vec<u8> = frames.iter().map(|f| f.label).collect();
    let frame = binary_metrics(&scores, &labels);
    let videos = video_scores(frames);
    let scores: Vec<f64> = videos.iter().map(|v| v.score).collect();
    let labels: Vec<u8> = videos.iter().map(|v| v.label).collect();
    let video = binary_metrics(&scores, &labels);
    LevelMetrics { frame, video }
}
