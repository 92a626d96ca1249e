//! The program: command-line syntax (`cli`), one function per command that
//! turns arguments into a call of the layer below (`run`), and what is
//! printed for people or as JSON (`report`).

pub(crate) mod cli;
pub(crate) mod report;
mod run;

pub use run::main;
