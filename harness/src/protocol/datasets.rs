//! The datasets a protocol may name, with their DeepfakeBench label names. This is the one place
//! that knows them: validation, defaults, folds and `bench list` all read this table.

/// One dataset as DeepfakeBench's JSON files name it (`<name>.json`, top-level key `<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetInfo {
    /// DeepfakeBench's name; the embedded synthetic benchmark uses the same names.
    pub name: &'static str,
    /// Label of the real videos (label 0).
    pub real: &'static str,
    /// Labels of the fake videos (label 1), in DeepfakeBench's order.
    pub fakes: &'static [&'static str],
    /// Fakes used when a protocol does not list `manipulations` (FF++: the four of the papers'
    /// tables, without FaceShifter).
    pub default_fakes: &'static [&'static str],
    /// Whether the JSON has a compression level (`c23`/`c40`/`raw`) under each split.
    pub compressed: bool,
    pub description: &'static str,
}

/// Compression levels of the FF++-family JSONs.
pub const COMPRESSIONS: &[&str] = &["c23", "c40", "raw"];
/// Splits of every DeepfakeBench JSON.
pub const SPLITS: &[&str] = &["train", "val", "test"];

static DATASETS: &[DatasetInfo] = &[
    DatasetInfo {
        name: "FaceForensics++",
        real: "FF-real",
        fakes: &["FF-DF", "FF-F2F", "FF-FS", "FF-NT", "FF-FH"],
        default_fakes: &["FF-DF", "FF-F2F", "FF-FS", "FF-NT"],
        compressed: true,
        description: "FF++: Deepfakes, Face2Face, FaceSwap, NeuralTextures, FaceShifter; 720/140/140 videos",
    },
    DatasetInfo {
        name: "DFD",
        real: "DFD_real",
        fakes: &["DFD_fake"],
        default_fakes: &["DFD_fake"],
        compressed: true,
        description: "DeepFakeDetection (Google/Jigsaw); every video in every split",
    },
    DatasetInfo {
        name: "Celeb-DF-v1",
        real: "CelebDFv1_real",
        fakes: &["CelebDFv1_fake"],
        default_fakes: &["CelebDFv1_fake"],
        compressed: false,
        description: "Celeb-DF v1",
    },
    DatasetInfo {
        name: "Celeb-DF-v2",
        real: "CelebDFv2_real",
        fakes: &["CelebDFv2_fake"],
        default_fakes: &["CelebDFv2_fake"],
        compressed: false,
        description: "Celeb-DF v2; test = the official 518-video list",
    },
    DatasetInfo {
        name: "DFDCP",
        real: "DFDCP_Real",
        fakes: &["DFDCP_FakeA", "DFDCP_FakeB"],
        default_fakes: &["DFDCP_FakeA", "DFDCP_FakeB"],
        compressed: false,
        description: "DFDC preview",
    },
    DatasetInfo {
        name: "DFDC",
        real: "DFDC_Real",
        fakes: &["DFDC_Fake"],
        default_fakes: &["DFDC_Fake"],
        compressed: false,
        description: "DeepFake Detection Challenge; test = 5000 videos",
    },
    DatasetInfo {
        name: "DeeperForensics-1.0",
        real: "DF_real",
        fakes: &["DF_fake"],
        default_fakes: &["DF_fake"],
        compressed: false,
        description: "DeeperForensics-1.0",
    },
    DatasetInfo {
        name: "UADFV",
        real: "UADFV_Real",
        fakes: &["UADFV_Fake"],
        default_fakes: &["UADFV_Fake"],
        compressed: false,
        description: "UADFV; every video in every split",
    },
];

/// Every known dataset, in the order `bench list` prints them.
pub fn registry() -> &'static [DatasetInfo] {
    DATASETS
}

pub fn find(name: &str) -> Option<&'static DatasetInfo> {
    DATASETS.iter().find(|d| d.name == name)
}

impl DatasetInfo {
    /// Every label of the dataset, real first.
    pub fn labels(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once(self.real).chain(self.fakes.iter().copied())
    }
}
