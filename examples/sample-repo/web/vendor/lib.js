// A vendored third-party library: skipped by the walk.
function leftPad(s, n) { return s.padStart(n); }
