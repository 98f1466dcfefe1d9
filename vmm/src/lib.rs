//! hyper-vmm (issue 4).
