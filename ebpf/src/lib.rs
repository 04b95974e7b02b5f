#![no_std]
// The programs are the `moat` binary target; this library only lets the agent depend on the
// package so cargo rebuilds it when the programs change.
