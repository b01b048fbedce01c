// A running host-network container with no labels, for label tests to override.
import type { ContainerInfo } from '../../../src/model/types.js';

export function container(over: Partial<ContainerInfo> = {}): ContainerInfo {
  return {
    id: 'c0ffee000001',
    name: 'app',
    created: 1700000000,
    labels: {},
    state: 'running',
    health: 'none',
    networkMode: 'host',
    networks: {},
    ports: [],
    exposed: [],
    ...over,
  };
}
