//! The SQLite engine: the embedded default, one file in the data directory (see the parent module).
