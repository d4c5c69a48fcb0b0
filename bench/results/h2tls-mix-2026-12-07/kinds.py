import json,sys
W={'mix-item-get':72,'mix-list-get':7,'mix-writes':15,'mix-bulk':1,'mix-denied':2}
V=['permgate-hyper','permgate-hyper-pass','nginx']
for f in sys.argv[1:]:
    d=json.load(open(f)); cpu={}; rr={}
    for c in d['cells']:
        cpu[(c['scenario'],c['variant'])]=c['cpu_us_per_req']
        rr[(c['scenario'],c['variant'])]=[round(r['cpu_us_per_req'],1) for r in c['rounds'] if r['cpu_us_per_req']]
    print(f)
    print('| kind (weight of 97) | permgate | pass-through | nginx | permgate ÷ nginx | share of the mix excess over nginx |')
    ex={k:W[k]*(cpu[(k,'permgate-hyper')]-cpu[(k,'nginx')])/97 for k in W}
    tot=sum(ex.values())
    for k in W:
        print(f"| {k} ({W[k]}) | {cpu[(k,'permgate-hyper')]:.1f} | {cpu[(k,'permgate-hyper-pass')]:.1f} | {cpu[(k,'nginx')]:.1f} | {cpu[(k,'permgate-hyper')]/cpu[(k,'nginx')]:.2f}× | {ex[k]:.2f} µs ({100*ex[k]/tot:.0f}%) |")
    rec={v:sum(W[k]*cpu[(k,v)] for k in W)/97 for v in V}
    print(f"| weighted sum | {rec['permgate-hyper']:.1f} | {rec['permgate-hyper-pass']:.1f} | {rec['nginx']:.1f} | {rec['permgate-hyper']/rec['nginx']:.2f}× | {tot:.2f} µs |")
    if ('crm-mix','nginx') in cpu:
        print(f"| crm-mix itself | {cpu[('crm-mix','permgate-hyper')]:.1f} | {cpu[('crm-mix','permgate-hyper-pass')]:.1f} | {cpu[('crm-mix','nginx')]:.1f} | {cpu[('crm-mix','permgate-hyper')]/cpu[('crm-mix','nginx')]:.2f}× | |")
    print('rounds:', {f'{k[0]}/{k[1]}':v for k,v in rr.items()})
