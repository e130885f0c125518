//! The TOML protocol language: parsing, field-by-field validation, errors with file:line:col.
