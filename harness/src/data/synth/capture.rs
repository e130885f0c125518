//! Per-dataset capture pipelines: what the camera, the upload and the dataset's preprocessing
//! did to every frame, real or fake. They make real frames differ across datasets as well.
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::Dataset;
use super::img::{self, Img};

/// One video's capture settings. Pixel quantities are in units of a 128-pixel frame and are
/// scaled with the frame size.
#[derive(Clone, Debug)]
pub struct Capture {
    /// Relative resolution of the original video's face (1 = the crop's own resolution).
    pub resolution: f32,
    pub blur: f32,
    /// Sensor noise standard deviation on the [0, 1] scale.
    pub noise: f32,
    pub jpeg: u8,
    pub cast: [f32; 3],
    pub gain: f32,
    pub gamma: f32,
}

impl Capture {
    pub fn sample(ds: Dataset, rng: &mut ChaCha8Rng) -> Self {
        match ds {
            // FF++ c23: light H.264, clean studio footage.
            Dataset::Ffpp => Self {
                resolution: 1.0,
                blur: rng.random_range(0.25..0.45),
                noise: 1.2 / 255.0,
                jpeg: rng.random_range(90..95),
                cast: [1.0, 1.0, 1.0],
                gain: 1.0,
                gamma: 1.0,
            },
            // Celeb-DF: higher-quality YouTube interviews, warmer grading, a touch more contrast.
            Dataset::CelebDf => Self {
                resolution: 1.0,
                blur: rng.random_range(0.3..0.6),
                noise: 2.0 / 255.0,
                jpeg: rng.random_range(84..92),
                cast: [1.04, 1.0, 0.94],
                gain: rng.random_range(0.97..1.05),
                gamma: 0.93,
            },
            // DFDC: phones and webcams in varied rooms, strong and varied degradation.
            Dataset::Dfdc => Self {
                resolution: rng.random_range(0.35..0.85),
                blur: rng.random_range(0.0..1.2),
                noise: rng.random_range(2.0..7.0) / 255.0,
                jpeg: rng.random_range(35..76),
                cast: [rng.random_range(0.9..1.1), rng.random_range(0.94..1.06), rng.random_range(0.88..1.1)],
                gain: rng.random_range(0.8..1.15),
                gamma: rng.random_range(0.9..1.12),
            },
            // DFDC preview: the same kind of actors, milder and more uniform processing.
            Dataset::Dfdcp => Self {
                resolution: rng.random_range(0.65..0.85),
                blur: rng.random_range(0.2..0.6),
                noise: 3.0 / 255.0,
                jpeg: rng.random_range(65..86),
                cast: [0.96, 1.0, 1.05],
                gain: rng.random_range(0.92..1.05),
                gamma: 1.03,
            },
            // UADFV: older low-resolution footage.
            Dataset::Uadfv => Self {
                resolution: rng.random_range(0.5..0.6),
                blur: 0.4,
                noise: 2.5 / 255.0,
                jpeg: rng.random_range(76..84),
                cast: [1.02, 1.0, 0.97],
                gain: 1.0,
                gamma: 1.0,
            },
        }
    }

    /// Apply to a rendered frame; returns 8-bit RGB. `rng` draws the noise of this very frame.
    pub fn apply(&self, frame: &Img, rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<u8>> {
        let n = frame.size;
        let k = n as f32 / 128.0;
        let mut im = if self.resolution < 0.999 {
            img::down_up(frame, ((n as f32) * self.resolution).round() as usize)
        } else {
            frame.clone()
        };
        img::gaussian_blur(&mut im.data, n, 3, self.blur * k);
        let noise = Normal::new(0.0f32, self.noise).expect("noise sigma is finite and positive");
        for (i, v) in im.data.iter_mut().enumerate() {
            let c = (*v * self.cast[i % 3] * self.gain).clamp(0.0, 1.0).powf(self.gamma);
            *v = c + noise.sample(rng);
        }
        img::jpeg_roundtrip(&im.to_u8(), n, self.jpeg)
    }
}
