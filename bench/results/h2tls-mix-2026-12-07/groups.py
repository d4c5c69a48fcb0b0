#!/usr/bin/env python3
"""Group a `perf report --no-children --sort dso,sym --stdio -F overhead,dso,sym` into shares."""
import re, sys, collections
RULES = [
 ('kernel', lambda d,s: d.startswith('[kernel') or d=='[unknown]' and s.startswith('0xffff')),
 ('TLS: rustls', lambda d,s: 'rustls' in s),
 ('TLS: OpenSSL (libssl/libcrypto)', lambda d,s: 'libssl' in d or 'libcrypto' in d),
 ('TLS: ring (crypto)', lambda d,s: re.search(r'\bring::', s) or s.startswith('ring_core') or re.search(r'aes_hw|aesni|gcm_|GFp|p256|ecp_nistz|chacha|poly1305|sha256_block|sha512_block|x25519|fiat_|CRYPTO_', s)),
 ('h2 crate', lambda d,s: re.search(r'\bh2::', s)),
 ('hyper', lambda d,s: 'hyper::' in s or 'hyper_util' in s),
 ('tokio/mio', lambda d,s: 'tokio::' in s or 'mio::' in s or 'tokio_rustls' in s),
 ('ours: decision (permgate_core)', lambda d,s: 'permgate_core' in s),
 ('ours: exchange (admit/edit/finish)', lambda d,s: 'permgate::exchange' in s),
 ('ours: lane/h1 codec/pool', lambda d,s: re.search(r'permgate::plane::(lane|h1|pool|gate)', s)),
 ('ours: other', lambda d,s: re.search(r'permgate', s)),
 ('malloc', lambda d,s: re.search(r'\b_?mi_|mimalloc|malloc|free\b|realloc|calloc|__rust_alloc|__rust_dealloc|__rdl_', s)),
 ('memcpy/memmove/memset/memcmp', lambda d,s: re.search(r'mem(cpy|move|set|cmp)|bcmp|__memcpy|__memmove', s)),
 ('http/bytes/httparse', lambda d,s: re.search(r'\bhttp::|\bbytes::|httparse|\bhttp_body', s)),
 ('clock (vdso)', lambda d,s: 'vdso' in d or 'clock_gettime' in s),
 ('nginx (ngx_*)', lambda d,s: d=='nginx' or s.startswith('ngx_')),
 ('haproxy', lambda d,s: d=='haproxy'),
 ('libc other', lambda d,s: d.startswith('libc')),
 ('std/core/alloc', lambda d,s: re.match(r'(std|core|alloc)::', s) or '<std::' in s or '<core::' in s or '<alloc::' in s),
]
def group(d,s):
    for name,f in RULES:
        if f(d,s): return name
    return 'other'
tot=collections.Counter(); top=collections.defaultdict(collections.Counter)
for line in open(sys.argv[1], errors='replace'):
    m=re.match(r'\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$', line)
    if not m: continue
    p=float(m.group(1)); d=m.group(2); s=m.group(4).strip()
    g=group(d,s); tot[g]+=p; top[g][s[:90]]+=p
n=sum(tot.values())
print(f"total listed: {n:.1f}%")
for g,p in tot.most_common():
    t=', '.join(f"{k} {v:.1f}" for k,v in top[g].most_common(4))
    print(f"{p:5.1f}%  {g:32s} {t}")
