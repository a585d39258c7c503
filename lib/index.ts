// Public API of linux-vhost.
import './dispose';
export { VhostError } from './errors';
export { FdOwner } from './fd';
export * from './features';
export * from './vhost';
export * from './vhost-net';
export * from './vhost-vsock';
export * from './eventfd';
export * from './memory';
export * from './vring';
export * from './tap';
export * from './probe';
