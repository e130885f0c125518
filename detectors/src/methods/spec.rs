//! The method registry: every method kind a protocol may name, with its hyperparameters, their
//! defaults and their sane ranges. Protocol validation and `bench list` read this table; the
//! method implementations read their hyperparameters by these names.

/// Type and range of one hyperparameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamKind {
    /// A float in `[min, max]` (`min_exclusive` makes the lower end open).
    Float { default: f64, min: f64, max: f64, min_exclusive: bool },
    Int { default: i64, min: i64, max: i64 },
    Bool { default: bool },
    /// One of a fixed set of strings; the first is the default.
    Choice { options: &'static [&'static str] },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    pub help: &'static str,
    /// Whether the resolved configuration (and so the run id) records the parameter when it has
    /// its default value. False only for switches added after results were published, so that
    /// protocols which do not set them keep their run ids.
    pub recorded_at_default: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodSpec {
    /// The name a protocol uses in `kind = "..."`.
    pub kind: &'static str,
    /// How tables label it.
    pub display: &'static str,
    pub help: &'static str,
    pub params: &'static [ParamSpec],
    /// A caveat that must travel with every result of this method (manifests, tables).
    pub note: Option<&'static str>,
}

impl MethodSpec {
    pub fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}

const fn float(name: &'static str, default: f64, min: f64, max: f64, help: &'static str) -> ParamSpec {
    ParamSpec { name, kind: ParamKind::Float { default, min, max, min_exclusive: false }, help, recorded_at_default: true }
}
const fn pos_float(name: &'static str, default: f64, max: f64, help: &'static str) -> ParamSpec {
    ParamSpec { name, kind: ParamKind::Float { default, min: 0.0, max, min_exclusive: true }, help, recorded_at_default: true }
}
const fn boolean(name: &'static str, default: bool, help: &'static str) -> ParamSpec {
    ParamSpec { name, kind: ParamKind::Bool { default }, help, recorded_at_default: true }
}
const fn choice(name: &'static str, options: &'static [&'static str], help: &'static str) -> ParamSpec {
    ParamSpec { name, kind: ParamKind::Choice { options }, help, recorded_at_default: true }
}

const STREAMS: ParamSpec = choice(
    "streams",
    &["original", "online", "both"],
    "training streams: original fakes (O), online SBI (S), or both (O+S, loss L1 + L2)",
);
const STREAMS_ORIGINAL: ParamSpec = choice(
    "streams",
    &["original", "online", "both"],
    "training streams the (sharpness-aware) objective is computed on",
);
/// Which implementation computes the update: the one-pass fast path (`methods::fused`) or the
/// reference that reads as the paper (`methods::cs_dfd`, `combine::cagrad_reference`). They
/// agree to a few f32 ulps (tests/methods_fused.rs), not bit for bit.
const PATH: ParamSpec = ParamSpec {
    name: "path",
    kind: ParamKind::Choice { options: &["fused", "reference"] },
    help: "implementation of the update: fused (one-pass fast path) or reference (the paper's steps over plain slices)",
    recorded_at_default: false,
};
/// ERM O+S's conflict diagnostics (the CS-DFD paper's Fig. 2): added after results were
/// published, so left out of the run id at its default (off).
const CONFLICT_EVERY: ParamSpec = ParamSpec {
    name: "conflict_every",
    kind: ParamKind::Int { default: 0, min: 0, max: 1_000_000 },
    help: "with streams = \"both\": every k steps trace cos(g1, g2), |g1|, |g2| from two extra backward passes on the step's graph (the update is unchanged); 0 = off",
    recorded_at_default: false,
};
const UVS_C: ParamSpec = pos_float("c", 0.5, 10.0, "UVS trust-region radius: ||v - g0|| <= c ||g0||");
const CGR_TAU: ParamSpec = float("tau", 0.01, 0.0, 1.0, "CGR conflict-term strength on the projection head");
const SAM_RHO: ParamSpec = pos_float("rho", 0.05, 5.0, "perturbation radius");
const SAGM_ALPHA: ParamSpec = float("alpha", 0.001, 0.0, 1.0, "gradient-matching shift of the ascent point");

static REGISTRY: &[MethodSpec] = &[
    MethodSpec {
        kind: "erm",
        display: "ERM",
        help: "empirical risk minimisation with the base optimizer (O, S or O+S)",
        params: &[STREAMS, CONFLICT_EVERY],
        note: None,
    },
    MethodSpec {
        kind: "cs-dfd",
        display: "CS-DFD",
        help: "CS-DFD: Update Vector Search on g1, g2 plus Conflict Gradient Reduction on the projection head",
        params: &[
            UVS_C,
            CGR_TAU,
            boolean("uvs", true, "apply UVS (false: backbone and classifier get g1 + g2)"),
            boolean("cgr", true, "apply CGR on the projection head (false: head gets plain gradients)"),
            PATH,
        ],
        note: None,
    },
    MethodSpec {
        kind: "pcgrad",
        display: "PCGrad",
        help: "PCGrad (Yu et al. 2020) on the original and online streams",
        params: &[],
        note: None,
    },
    MethodSpec {
        kind: "cagrad",
        display: "CAGrad",
        help: "CAGrad, LibMTL convention (mean g0, output divided by 1 + c^2) on the two streams",
        params: &[pos_float("c", 0.5, 10.0, "trust-region radius"), PATH],
        note: None,
    },
    MethodSpec {
        kind: "sam",
        display: "SAM",
        help: "sharpness-aware minimisation (Foret et al.) around the base optimizer",
        params: &[SAM_RHO, STREAMS_ORIGINAL],
        note: None,
    },
    MethodSpec {
        kind: "asam",
        display: "ASAM",
        help: "adaptive SAM (Kwon et al.) around the base optimizer",
        params: &[
            pos_float("rho", 0.5, 10.0, "perturbation radius"),
            pos_float("eta", 0.01, 1.0, "scale offset T = |w| + eta"),
            STREAMS_ORIGINAL,
        ],
        note: None,
    },
    MethodSpec {
        kind: "sagm",
        display: "SAGM",
        help: "sharpness-aware gradient matching (Wang et al., CVPR 2023) around the base optimizer",
        params: &[SAM_RHO, SAGM_ALPHA, STREAMS_ORIGINAL],
        note: None,
    },
    MethodSpec {
        kind: "roga",
        display: "RoGA (reconstructed)",
        help: "RoGA as reconstructed from the paper's prose: per-domain SAGM-style perturbations",
        params: &[
            pos_float("rho", 0.1, 5.0, "per-domain perturbation radius"),
            float("alpha", 0.001, 0.0, 1.0, "alignment shift toward the ERM gradient"),
            float("weight", 0.5, 0.0, 1.0, "direction = weight * g + (1 - weight) * mean perturbed gradient"),
        ],
        note: Some("RoGA (reconstructed): the authors' code is unavailable; this is the documented reconstruction"),
    },
    MethodSpec {
        kind: "cvar-auc",
        display: "CVaR+AUC",
        help: "CVaR of per-sample BCE plus a pairwise AUC term (SP_CUP), optionally with SAM",
        params: &[
            ParamSpec {
                name: "alpha",
                kind: ParamKind::Float { default: 0.9, min: 0.0, max: 1.0, min_exclusive: true },
                help: "CVaR level: mean of the largest ceil(alpha B) losses (1 = ERM)",
                recorded_at_default: true,
            },
            float("gamma", 0.6, 0.0, 100.0, "weight of the AUC term"),
            float("sam_rho", 0.0, 0.0, 5.0, "SAM radius; 0 disables SAM"),
            STREAMS_ORIGINAL,
        ],
        note: None,
    },
];

/// Every method kind, in the order `bench list` prints them.
pub fn registry() -> &'static [MethodSpec] {
    REGISTRY
}

/// Looks a kind up by its protocol name.
pub fn find(kind: &str) -> Option<&'static MethodSpec> {
    REGISTRY.iter().find(|m| m.kind == kind)
}
