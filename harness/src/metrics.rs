//! Frame- and video-level metrics (AUC, AP, EER, ACC), identical to scikit-learn/DeepfakeBench.
