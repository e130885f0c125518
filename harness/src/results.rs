//! Results store: run directories, manifests, atomic writes. (Filled by the `bench run` issue.)
