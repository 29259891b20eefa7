#![no_std]
// The library target exists so that tracer-user can name this crate as a build dependency and
// cargo rebuilds the embedded object when it changes; the programs live in the binary target.
