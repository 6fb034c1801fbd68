//! Behaviour of the query language: parsing errors, IoT Hub's documented examples, properties.

mod examples;
mod parsing;
mod properties;
