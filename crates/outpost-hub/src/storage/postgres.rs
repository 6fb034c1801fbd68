//! The PostgreSQL engine: several hub replicas on one database (see the parent module).
