//! Simulated hardware. (Stub: replaced by the simulator work.)
