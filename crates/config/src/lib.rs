//! Configuration: sources, INI parsing, typed settings and validation.
#![forbid(unsafe_code)]
