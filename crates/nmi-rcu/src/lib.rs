// BEGIN handler-layer modules
// END handler-layer modules
