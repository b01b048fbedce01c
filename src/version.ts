// One place for the version: the CLI, the API and agents' heartbeats report it.
export const VERSION = '0.1.0';
