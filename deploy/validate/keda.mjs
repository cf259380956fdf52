// Validate KEDA objects (JSON documents, one array on stdin) against KEDA's CRD schemas, as
// packaged by @kubernetes-models/keda. kubernetes-validate has no schemas for CRDs.
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";

const kinds = { ScaledObject, TriggerAuthentication };
let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const doc of JSON.parse(input)) {
  const Kind = kinds[doc.kind];
  const what = `${doc.kind}/${doc.metadata?.name}`;
  if (!Kind || doc.apiVersion !== "keda.sh/v1alpha1") {
    console.error(`${what}: not a KEDA object this validator knows (${doc.apiVersion})`);
    failed++;
    continue;
  }
  try {
    new Kind(doc).validate();
    console.log(`${what}: valid`);
  } catch (error) {
    console.error(`${what}: ${error.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
