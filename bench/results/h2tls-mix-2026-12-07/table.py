import re,sys,json
# table.py dir "name=cpu,name=cpu" : shares scaled to µs per call
names=['kernel','TLS: rustls','TLS: OpenSSL (libssl/libcrypto)','TLS: ring (crypto)','h2 crate','hyper','tokio/mio','ours: decision (permgate_core)','ours: exchange (admit/edit/finish)','ours: lane/h1 codec/pool','ours: other','malloc','memcpy/memmove/memset/memcmp','http/bytes/httparse','clock (vdso)','nginx (ngx_*)','haproxy','libc other','std/core/alloc','other']
def load(f):
    d={}
    for l in open(f):
        m=re.match(r'\s*([\d.]+)%\s+(.*)$',l)
        if not m: continue
        for n in names:
            if m.group(2).startswith(n+' '): d[n]=float(m.group(1))
    return d
dir=sys.argv[1]; cpu={k:float(v) for k,v in (x.split('=') for x in sys.argv[2].split(','))}
S={n:load(f'{dir}/shares-{n}.txt') for n in cpu}
print('| share of CPU (µs per call) | '+' | '.join(f'{n} ({cpu[n]:.1f} µs)' for n in cpu)+' |')
print('|---|'+'---:|'*len(cpu))
for g in names:
    if not any(S[n].get(g,0)>=0.05 for n in cpu): continue
    print(f'| {g} | '+' | '.join('%.1f%% (%.1f)'%(S[n].get(g,0), S[n].get(g,0)*cpu[n]/100) if S[n].get(g,0)>0 else '–' for n in cpu)+' |')
