//! Statistics over stored results: DeLong's test and bootstrap confidence intervals.
